"""SecurityPolicy (gw.dev/v1alpha1), typed: what gw.config.parse_security_policy reads from YAML.

Envoy Gateway's SecurityPolicy field names, so its users feel at home:

    apiVersion: gw.dev/v1alpha1
    kind: SecurityPolicy
    metadata: {name: api, namespace: default}
    spec:
      targetRefs:                      # a Gateway, an HTTPRoute, or a named rule of one (sectionName)
      - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}
      apiKeyAuth:
        credentialRefs: [{name: api-keys}]       # Secret data: client id → key
        extractFrom: [{headers: [x-api-key]}, {params: [api_key]}, {cookies: [api_key]}]
        forwardClientIDHeader: x-client-id       # optional: the client id, to the backend
        sanitize: true                           # optional: the key is not forwarded
      basicAuth:
        users: {name: htpasswd}                  # Secret key `.htpasswd`: bcrypt and {SHA} entries
        forwardUsernameHeader: x-user            # optional
      jwt:
        optional: false                          # true: a request without a token passes (anonymous)
        providers:                               # tried in order; the first that verifies the token wins
        - name: idp
          issuer: https://idp.example.com
          audiences: [api]
          remoteJWKS: {uri: https://idp.example.com/.well-known/jwks.json}
          claimToHeaders: [{header: x-user, claim: sub}]
      extAuth:                                   # forward auth: each request asks an HTTP service first
        http:
          backendRefs: [{name: auth, port: 8080}]  # a Service or Backend (several: their endpoints pooled)
          path: /check                           # prefix of the request's own path: /check/orders?id=1
          headersToBackend: [x-user]             # copied from a 200 answer onto the upstream request
        headersToExtAuth: [cookie]               # beyond Host, Authorization and X-Forwarded-*
        failOpen: false                          # true: an unreachable/failing service lets requests through
        timeout: 10s                             # Envoy Gateway's default
        statusOnError: 403                       # the answer when the service cannot answer (fail closed)
      authorization:
        defaultAction: Deny                      # Allow | Deny (Deny when not given, as Envoy Gateway)
        rules:
        - name: office
          action: Allow
          principal: {clientCIDRs: [10.0.0.0/8], headers: [{name: x-team, values: [ops]}]}
          operation: {methods: [GET]}
        - name: readers
          action: Allow
          principal: {jwt: {provider: idp, scopes: [read], claims: [{name: org.team, values: [blue]}]}}

The most specific policy wins whole, as in Envoy Gateway (no merging of sections): a rule's own
(sectionName) over its route's over its Gateway's. `oidc` (gw.config.oidc) logs browsers in with
an OpenID provider; `extAuth` asks an external service (gw.config.ext_auth). Mechanisms gw does
not serve yet (cors, csrf; extAuth's grpc, bodyToExtAuth, recomputeRoute, pathOverride,
contextExtensions, includeRouteMetadata; in authorization clientIPGeoLocations, operation.path,
cel) are read enough to be named: a policy asking for one makes the rules it wins answer 500
saying which, never lets them through unauthenticated.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gw.auth.provider import JWT
    from gw.config.oidc import OIDC
    from gw.config.ratelimit import TargetRef
    from gw.config.resources import BackendRefSpec, Meta

KIND = "SecurityPolicy"
ALLOW, DENY = "Allow", "Deny"
HTPASSWD_KEY = ".htpasswd"  # Envoy Gateway's BasicAuthUsersSecretKey

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class SecretName:
    """A credentialRefs / users entry: a Secret in the policy's namespace."""

    name: str
    field: str  # where it was written, for errors about what it holds


@dataclass(frozen=True, slots=True)
class ExtractFrom:
    """One place to look for an API key; exactly one of the three is non-empty."""

    headers: tuple[str, ...] = ()  # lower case
    params: tuple[str, ...] = ()
    cookies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class APIKeyAuth:
    credential_refs: tuple[SecretName, ...]
    extract_from: tuple[ExtractFrom, ...]
    forward_client_id_header: str | None = None
    sanitize: bool = False


@dataclass(frozen=True, slots=True)
class BasicAuth:
    users: SecretName
    forward_username_header: str | None = None


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str  # lower case
    values: tuple[str, ...]


STRING, STRING_ARRAY = "String", "StringArray"  # a JWT claim's valueType in an authorization principal


@dataclass(frozen=True, slots=True)
class ClaimMatch:
    name: str  # a claim, or a dotted path into nested objects
    value_type: str  # STRING: the claim equals one of values; STRING_ARRAY: one of its items does
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class JWTPrincipal:
    """The token the policy's jwt verified: by `provider`, with every claim and every scope given."""

    provider: str
    claims: tuple[ClaimMatch, ...] = ()
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthorizationRule:
    name: str
    action: str
    client_cidrs: tuple[Network, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()
    methods: tuple[str, ...] = ()
    jwt: JWTPrincipal | None = None


@dataclass(frozen=True, slots=True)
class Authorization:
    rules: tuple[AuthorizationRule, ...]
    default_action: str = DENY


@dataclass(frozen=True, slots=True)
class ExtAuth:
    """Forward auth: a SecurityPolicy's extAuth.http, or an HTTPRoute rule's ExternalAuth filter
    (GEP-1494), which compiles to the same thing. gw.policies.security.ext_auth applies it.

    `refs` are resolved when the config compiles: `backend` is then the model.Backend the calls go
    to (None before, or when it cannot be resolved: the rules answer 500).
    """

    refs: tuple[BackendRefSpec, ...]
    path: str = ""  # prefixed to the request's own path (query included)
    headers_to_ext_auth: tuple[str, ...] = ()  # lower case, sent besides the ones always sent
    # Lower case, copied from a 200 answer onto the upstream request (replacing the client's);
    # None: every field of the answer but framing and hop-by-hop ones (GEP-1494, allowedResponseHeaders empty).
    headers_to_backend: tuple[str, ...] | None = ()
    fail_open: bool = False
    timeout: float = 10.0  # seconds: Envoy Gateway's default
    status_on_error: int = 403  # Envoy's status_on_error default
    field: str = ""  # where it was written: errors about its backend
    backend: Any = None  # gw.config.model.Backend, once resolved


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    meta: Meta
    targets: tuple[TargetRef, ...]
    api_key_auth: APIKeyAuth | None = None
    basic_auth: BasicAuth | None = None
    authorization: Authorization | None = None
    jwt: JWT | None = None
    ext_auth: ExtAuth | None = None
    # What gw does not serve yet, as "spec.oidc" etc.: the rules the policy wins answer 500.
    unserved: tuple[str, ...] = ()
    # The first problem of a policy written wrong: it is refused (`gw check`), and the rules it
    # targets answer 500 rather than go unauthenticated.
    invalid: str | None = None
    oidc: OIDC | None = None


@dataclass(slots=True, eq=False)
class Security:
    """A SecurityPolicy as one compiled rule applies it, its Secrets read (gw.config.security_attach).

    api_keys: client id → key; users: user name → htpasswd hash entry (bcrypt or {SHA}).
    """

    policy: str  # "namespace/name": metrics and logs
    api_key_auth: APIKeyAuth | None = None
    api_keys: dict[str, bytes] = field(default_factory=dict, repr=False)
    basic_auth: BasicAuth | None = None
    users: dict[str, bytes] = field(default_factory=dict, repr=False)
    authorization: Authorization | None = None
    jwt: JWT | None = None
    ext_auth: ExtAuth | None = None  # its backend resolved
    realm: str = ""  # WWW-Authenticate's realm for basicAuth and jwt
    oidc: OIDC | None = None
    oidc_client_secret: bytes = field(default=b"", repr=False)  # the Secret's client-secret
