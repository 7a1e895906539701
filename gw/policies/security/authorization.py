"""authorization: the policy's rules in order, the first that matches decides; else defaultAction. Deny is 403.

A rule matches when every principal it names matches (Envoy Gateway): the client's address in one
of clientCIDRs, each header equal to one of its values, the method among operation.methods. The
client address is the peer's (gw has no ClientTrafficPolicy to trust X-Forwarded-For yet). A jwt
principal matches the token the policy's jwt phase verified (it runs before): by the provider named,
each claim given equal to one of its values (a StringArray claim: one of its items), every scope
given among the token's (`scope`, space-separated, or an `scp` list). An anonymous request (no
token, jwt `optional`) matches no jwt principal.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from gw.auth.jwt import claim, scopes
from gw.config.security_policy import ALLOW, STRING
from gw.errors import Forbidden
from gw.policies.phase import ANSWERED, CONTINUE, Exchange, Phase
from gw.policies.security.identity import Decisions

ADDRESSES = 10_000  # client addresses a worker remembers parsed


class _Rule:
    __slots__ = ("allow", "cidrs", "headers", "jwt", "methods")

    def __init__(self, rule: Any) -> None:
        self.allow = rule.action == ALLOW
        self.cidrs = rule.client_cidrs
        self.headers = [(h.name.encode(), {v.encode() for v in h.values}) for h in rule.headers]
        self.methods = {m.encode() for m in rule.methods}
        self.jwt = rule.jwt


def _token_matches(principal: Any, identity: Any) -> bool:
    if identity is None or identity.claims is None or getattr(identity, "provider", None) != principal.provider:
        return False
    claims = identity.claims
    for match in principal.claims:
        value = claim(claims, match.name)
        if match.value_type == STRING:
            if not isinstance(value, str) or value not in match.values:
                return False
        elif not isinstance(value, list) or not any(isinstance(v, str) and v in match.values for v in value):
            return False
    return not principal.scopes or scopes(claims).issuperset(principal.scopes)


class Authorization(Phase):
    kind = "authorization"

    def __init__(self, security: Any, metrics: Any) -> None:
        config = security.authorization
        self.rules = [_Rule(r) for r in config.rules]
        self.default_allow = config.default_action == ALLOW
        self.addresses: dict[bytes, Any] = {}
        self.refusal = Forbidden("the request is not allowed")
        self.decisions = Decisions(metrics, security.policy)

    def on_request(self, ex: Exchange) -> int:
        allow = self.default_allow
        for rule in self.rules:
            if self._matches(rule, ex):
                allow = rule.allow
                break
        if allow:
            self.decisions.add("allowed")
            return CONTINUE
        self.decisions.add("denied")
        ex.fail(self.refusal)
        return ANSWERED

    def _matches(self, rule: _Rule, ex: Exchange) -> bool:
        if rule.methods and ex.method not in rule.methods:
            return False
        if rule.cidrs:
            address = self._address(ex.client_host)
            if address is None or not any(address in net for net in rule.cidrs):
                return False
        for name, values in rule.headers:
            found = [v.strip() for n, v in ex.fields() if n.lower() == name]
            if not found or not any(v in values for v in found):
                return False
        return rule.jwt is None or _token_matches(rule.jwt, ex.identity)

    def _address(self, host: bytes) -> Any:
        known = self.addresses.get(host, False)
        if known is not False:
            return known
        try:
            address: Any = ipaddress.ip_address(host.decode("latin-1"))
            if address.version == 6 and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
        except ValueError:
            address = None
        if len(self.addresses) >= ADDRESSES:
            del self.addresses[next(iter(self.addresses))]
        self.addresses[host] = address
        return address


def build(rule: Any, services: Any) -> Phase | None:
    security = rule.security
    if security is None or security.authorization is None:
        return None
    return Authorization(security, services.metrics)
