"""sessionPersistence (GEP-1619 v1.6) in config: fields validated by name, defaults per rule, a rule's own
setting over its backends' (BackendTrafficPolicy), the ClientIP sessionAffinity conflict, `gw check`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gw.cli import main
from gw.config import compile_resources
from gw.config.filters import ALL_FEATURES
from gw.config.parse import parse_documents
from gw.config.session import COOKIE, HEADER, PERMANENT, SESSION, SessionPersistence, cookie_path, scope_tag
from gw.routing.match import PATH_EXACT, PATH_PREFIX, PATH_REGEX, RouteMatch
from gw.settings import Settings, SettingsError

GATEWAY = "gateway.networking.k8s.io/v1"
BASE = [
    {"apiVersion": GATEWAY, "kind": "GatewayClass", "metadata": {"name": "gw"},
     "spec": {"controllerName": "gw.dev/gateway-controller"}},
    {"apiVersion": GATEWAY, "kind": "Gateway", "metadata": {"name": "edge"},
     "spec": {"gatewayClassName": "gw", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}},
    {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "app"},
     "spec": {"endpoints": [{"address": "127.0.0.1", "port": 9}]}},
    {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "other"},
     "spec": {"endpoints": [{"address": "127.0.0.1", "port": 10}]}},
]  # fmt: skip
APP = {"group": "gw.dev", "kind": "Backend", "name": "app"}
OTHER = {"group": "gw.dev", "kind": "Backend", "name": "other"}


def route(*rules: dict[str, Any], name: str = "shop") -> dict[str, Any]:
    """An HTTPRoute on edge; rule i matches PathPrefix /shop/i unless it says otherwise."""
    spec_rules = [
        {"matches": [{"path": {"type": "PathPrefix", "value": f"/{name}/{i}"}}], "backendRefs": [APP], **rule}
        for i, rule in enumerate(rules)
    ]
    return {"apiVersion": GATEWAY, "kind": "HTTPRoute", "metadata": {"name": name},
            "spec": {"parentRefs": [{"name": "edge"}], "rules": spec_rules}}  # fmt: skip


def policy(name: str, target: dict[str, Any], **spec: Any) -> dict[str, Any]:
    targets = [{"group": "gw.dev", "kind": "Backend", "name": target["name"]}]
    return {"apiVersion": "gw.dev/v1alpha1", "kind": "BackendTrafficPolicy", "metadata": {"name": name},
            "spec": {"targetRefs": targets, **spec}}  # fmt: skip


def compiled(*docs: dict[str, Any], features: frozenset[str] = ALL_FEATURES) -> Any:
    resources, errors = parse_documents([("sessions.yaml", d) for d in [*BASE, *docs]])
    return compile_resources(resources, errors=errors, features=features)


def sessions(result: Any) -> list[SessionPersistence | None]:
    return [rule.session_persistence for rule in result.config.rules]


def messages(result: Any) -> list[str]:
    return [f"{e.field}: {e.message}" for e in result.errors]


def test_a_rule_without_session_persistence_has_none() -> None:
    assert sessions(compiled(route({}))) == [None]


def test_the_defaults_are_a_session_cookie_named_for_the_rule_and_scoped_to_its_path() -> None:
    (s,) = sessions(compiled(route({"sessionPersistence": {}})))
    assert s == SessionPersistence(
        type=COOKIE,
        lifetime=SESSION,
        name="gw-session-" + scope_tag("default/shop#0"),
        scope="default/shop#0",
        path="/shop/0",
        source="HTTPRoute default/shop rule 0",
    )


def test_two_rules_never_share_a_session() -> None:
    a, b = sessions(compiled(route({"sessionPersistence": {}}, {"sessionPersistence": {}})))
    assert a is not None and b is not None
    assert a.name != b.name and a.scope != b.scope


def test_a_permanent_cookie_with_its_timeout() -> None:
    sp = {"sessionName": "shop", "absoluteTimeout": "1h30m", "cookieConfig": {"lifetimeType": "Permanent"}}
    (s,) = sessions(compiled(route({"sessionPersistence": sp})))
    assert s is not None
    assert (s.name, s.lifetime, s.absolute_timeout, s.max_age) == ("shop", PERMANENT, 5400.0, 5400)


def test_a_header_session() -> None:
    (s,) = sessions(compiled(route({"sessionPersistence": {"type": "Header", "sessionName": "X-Session"}})))
    assert s is not None and (s.type, s.name, s.max_age) == (HEADER, "X-Session", None)


@pytest.mark.parametrize(
    ("sp", "field", "says"),
    [
        ({"cookieConfig": {"lifetimeType": "Permanent"}}, "absoluteTimeout", "is required when cookieConfig"),
        ({"type": "Sticky"}, "type", "Sticky"),
        ({"absoluteTimeout": "ten minutes"}, "absoluteTimeout", "not a Gateway API duration"),
        ({"absoluteTimeout": "0s"}, "absoluteTimeout", "longer than 0s"),
        ({"sessionName": "my session"}, "sessionName", "not a cookie or header name"),
        ({"sessionName": "s" * 129}, "sessionName", "at most 128"),
        ({"type": "Header", "cookieConfig": {}}, "cookieConfig", "only be set with type Cookie"),
        ({"cookieConfig": {"lifetimeType": "Forever"}}, "cookieConfig.lifetimeType", "Forever"),
        ({"cookieConfig": {"lifeTime": "Session"}}, "cookieConfig.lifeTime", ""),
        ({"idleTimeout": "10m"}, "idleTimeout", "removed from the Gateway API"),
        ({"name": "a"}, "name", ""),
    ],
)
def test_a_bad_field_is_named_and_drops_the_rule(sp: dict[str, Any], field: str, says: str) -> None:
    result = compiled(route({}, {"sessionPersistence": sp}))
    where = f"spec.rules[1].sessionPersistence.{field}"
    assert any(m.startswith(where) and says in m for m in messages(result)), messages(result)
    assert [r.index for r in result.config.rules] == [0]  # the rule is dropped, the other serves


def test_the_data_plane_without_session_persistence_answers_500_for_the_rule() -> None:
    result = compiled(route({"sessionPersistence": {}}), features=ALL_FEATURES - {"sessionPersistence"})
    (rule,) = result.config.rules
    assert "sessionPersistence not applied by this gw's data plane yet" in (rule.invalid_reason or "")


def test_a_backend_traffic_policy_section_applies_to_every_rule_reaching_the_backend() -> None:
    sp = {"sessionName": "cart", "absoluteTimeout": "10m"}
    a, b = sessions(compiled(route({}, {}), policy("sticky", APP, sessionPersistence=sp)))
    assert a is not None and b is not None
    assert a.source == b.source == "BackendTrafficPolicy default/sticky"
    # a backend-level cookie has no Path (GEP-1619), so each rule gets its own name
    assert (a.name, b.name) == ("cart-" + scope_tag("default/shop#0"), "cart-" + scope_tag("default/shop#1"))
    assert a.path is None and a.absolute_timeout == 600.0


def test_a_rules_own_setting_overrides_the_backends() -> None:
    result = compiled(
        route({"sessionPersistence": {"type": "Header", "sessionName": "X-Own"}}, {}),
        policy("sticky", APP, sessionPersistence={"sessionName": "cart"}),
    )
    own, inherited = sessions(result)
    assert own is not None and inherited is not None
    assert (own.type, own.name, own.source) == (HEADER, "X-Own", "HTTPRoute default/shop rule 0")
    assert inherited.source == "BackendTrafficPolicy default/sticky"


def test_a_split_over_backends_with_different_settings_takes_the_first_refs_and_says_so() -> None:
    result = compiled(
        route({"backendRefs": [APP, OTHER]}),
        policy("a", APP, sessionPersistence={"sessionName": "a"}),
        policy("b", OTHER, sessionPersistence={"sessionName": "b"}),
    )
    (s,) = sessions(result)
    assert s is not None and s.source == "BackendTrafficPolicy default/a"
    assert any("different sessionPersistence" in m and "default/b" in m for m in messages(result))


def test_a_bad_policy_section_is_named() -> None:
    result = compiled(
        route({}), policy("sticky", APP, sessionPersistence={"cookieConfig": {"lifetimeType": "Permanent"}})
    )
    assert any(m.startswith("spec.sessionPersistence.absoluteTimeout") for m in messages(result)), messages(result)
    assert sessions(result) == [None]


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "legacy"},
           "spec": {"sessionAffinity": "ClientIP", "ports": [{"port": 80}]}}  # fmt: skip
SLICE = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "legacy-1", "labels": {"kubernetes.io/service-name": "legacy"}},
         "ports": [{"port": 8080}], "endpoints": [{"addresses": ["10.0.0.1"]}]}  # fmt: skip


def test_session_persistence_with_a_client_ip_affinity_service_rejects_the_route() -> None:
    ref = {"kind": "Service", "name": "legacy", "port": 80}
    result = compiled(SERVICE, SLICE, route({"backendRefs": [ref], "sessionPersistence": {}}, {}))
    accepted = [c for c in result.conditions["HTTPRoute default/shop"] if c.type == "Accepted"]
    assert accepted and all(not c.status and c.reason == "UnsupportedValue" for c in accepted)
    assert "sessionAffinity: ClientIP" in accepted[0].message
    assert all("is rejected" in (r.invalid_reason or "") for r in result.config.rules)
    assert any(m.startswith("spec.rules[0].sessionPersistence") for m in messages(result))


def test_client_ip_affinity_alone_is_fine() -> None:
    ref = {"kind": "Service", "name": "legacy", "port": 80}
    result = compiled(SERVICE, SLICE, route({"backendRefs": [ref]}))
    assert all(r.invalid_reason is None for r in result.config.rules)


def test_a_bad_session_affinity_is_named() -> None:
    bad = {**SERVICE, "spec": {"sessionAffinity": "Cookie", "ports": [{"port": 80}]}}
    _, errors = parse_documents([("s.yaml", bad)])
    assert any(e.field == "spec.sessionAffinity" for e in errors)


def test_gw_check_shows_the_session_persistence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sp = {"sessionName": "cart", "absoluteTimeout": "1h", "cookieConfig": {"lifetimeType": "Permanent"}}
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump_all([*BASE, route({"sessionPersistence": sp})]))
    assert main(["check", str(config)]) == 0
    out = capsys.readouterr().out
    assert "HTTPRoute default/shop" in out and "not applied" not in out


def test_gw_routes_describes_the_session() -> None:
    from gw.config.describe import describe_rule

    sp = {"sessionName": "cart", "absoluteTimeout": "1h", "cookieConfig": {"lifetimeType": "Permanent"}}
    (rule,) = compiled(route({"sessionPersistence": sp})).config.rules
    assert "session=Cookie cart permanent cookie path=/shop/0 timeout=3600s" in describe_rule(rule)


@pytest.mark.parametrize(
    ("matches", "path"),
    [
        ([], "/"),
        ([RouteMatch()], "/"),
        ([RouteMatch(PATH_PREFIX, "/shop")], "/shop"),
        ([RouteMatch(PATH_EXACT, "/shop/cart")], "/shop/cart"),
        ([RouteMatch(PATH_PREFIX, "/shop/a"), RouteMatch(PATH_PREFIX, "/shop/b")], "/shop"),
        ([RouteMatch(PATH_PREFIX, "/ab"), RouteMatch(PATH_PREFIX, "/ac")], "/"),
        ([RouteMatch(PATH_REGEX, "/p1/p2/.*/p3")], "/p1/p2"),  # GEP-1619's example
        ([RouteMatch(PATH_REGEX, "^/api")], "/"),
    ],
)
def test_the_cookie_path_is_what_every_match_lies_under(matches: list[RouteMatch], path: str) -> None:
    assert cookie_path(matches) == path


def test_a_policy_session_on_a_client_ip_affinity_service_rejects_the_routes_reaching_it() -> None:
    ref = {"kind": "Service", "name": "legacy", "port": 80}
    sticky = {"apiVersion": "gw.dev/v1alpha1", "kind": "BackendTrafficPolicy", "metadata": {"name": "sticky"},
              "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "legacy"}],
                       "sessionPersistence": {}}}  # fmt: skip
    result = compiled(SERVICE, SLICE, route({"backendRefs": [ref]}), sticky)
    accepted = [c for c in result.conditions["HTTPRoute default/shop"] if c.type == "Accepted"]
    assert accepted and not accepted[0].status and "BackendTrafficPolicy default/sticky" in accepted[0].message


def test_session_keys_are_a_list_the_first_signs() -> None:
    settings = Settings.from_env({"GW_SESSION_KEYS": "new-key-0123456789, old-key-0123456789"})
    assert settings.session_keys == (b"new-key-0123456789", b"old-key-0123456789")
    assert "new-key" not in repr(settings)  # secrets stay out of logs and tracebacks
    with pytest.raises(SettingsError, match=r"GW_SESSION_KEYS=\(secret\): key 2 is shorter than 16 bytes"):
        Settings.from_env({"GW_SESSION_KEYS": "new-key-0123456789,short"})
    assert Settings().session_keys == ()
