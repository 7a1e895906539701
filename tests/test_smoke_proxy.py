"""The gateway forwards a request to its upstream and answers with the upstream's response."""

import json

from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream


def test_get_is_forwarded_and_answered(gateway: GatewayProcess, upstream: Upstream) -> None:
    client = gateway.connect()
    resp = client.request("GET", "/hello?x=1")
    assert resp.status == 200
    echoed = json.loads(resp.body)
    assert echoed["target"] == "/hello?x=1"
    assert upstream.seen[-1].method == "GET"
