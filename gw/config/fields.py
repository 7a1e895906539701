"""The fields of each Gateway API (v1, standard and experimental) and gw object gw reads.

The API server refuses a manifest with a field its schema does not know (kubectl's default
`--validate=strict`); gw does the same for the objects it reads from files, so that a typo such as
`header:` for `headers:` is an error rather than a match condition silently dropped. Fields the
spec defines that gw does not implement are listed too: they are known, and refused or ignored
where they are read.
"""

from __future__ import annotations

F = frozenset

PARENT_REF = F({"group", "kind", "namespace", "name", "sectionName", "port"})
HTTP_ROUTE_SPEC = F({"parentRefs", "hostnames", "rules"})
HTTP_ROUTE_RULE = F({"name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"})
HTTP_ROUTE_MATCH = F({"path", "headers", "queryParams", "method"})
PATH_MATCH = F({"type", "value"})
VALUE_MATCH = F({"type", "name", "value"})  # HTTPHeaderMatch, HTTPQueryParamMatch
TIMEOUTS = F({"request", "backendRequest"})
RETRY = F({"codes", "attempts", "backoff"})
BACKEND_OBJECT_REF = F({"group", "kind", "name", "namespace", "port"})
HTTP_BACKEND_REF = BACKEND_OBJECT_REF | {"weight", "filters"}

HTTP_ROUTE_FILTER = F(
    {
        "type",
        "requestHeaderModifier",
        "responseHeaderModifier",
        "requestMirror",
        "requestRedirect",
        "urlRewrite",
        "cors",
        "extensionRef",
        "externalAuth",
    }
)
HEADER_MODIFIER = F({"set", "add", "remove"})
HEADER = F({"name", "value"})
PATH_MODIFIER = F({"type", "replaceFullPath", "replacePrefixMatch"})
FRACTION = F({"numerator", "denominator"})
# Each filter type's own configuration, by the key that holds it.
FILTER_CONFIG = {
    "requestHeaderModifier": HEADER_MODIFIER,
    "responseHeaderModifier": HEADER_MODIFIER,
    "requestRedirect": F({"scheme", "hostname", "path", "port", "statusCode"}),
    "urlRewrite": F({"hostname", "path"}),
    "requestMirror": F({"backendRef", "percent", "fraction"}),
    "cors": F({"allowOrigins", "allowCredentials", "allowMethods", "allowHeaders", "exposeHeaders", "maxAge"}),
    "extensionRef": F({"group", "kind", "name"}),
}

GATEWAY_CLASS_SPEC = F({"controllerName", "parametersRef", "description"})
GATEWAY_SPEC = F(
    {"gatewayClassName", "listeners", "addresses", "infrastructure", "backendTLS", "allowedListeners", "tls"}
)
GATEWAY_TLS = F({"backend", "frontend"})
GATEWAY_BACKEND_TLS = F({"clientCertificateRef"})
FRONTEND_TLS = F({"default", "perPort"})
FRONTEND_TLS_PORT = F({"port", "tls"})
FRONTEND_TLS_CONFIG = F({"validation"})
FRONTEND_TLS_VALIDATION = F({"caCertificateRefs", "mode"})
OBJECT_REF = F({"group", "kind", "name", "namespace"})
LISTENER = F({"name", "hostname", "port", "protocol", "tls", "allowedRoutes"})
LISTENER_TLS = F({"mode", "certificateRefs", "frontendValidation", "options"})
SECRET_REF = F({"group", "kind", "name", "namespace"})
ALLOWED_ROUTES = F({"namespaces", "kinds"})
ROUTE_NAMESPACES = F({"from", "selector"})
ROUTE_GROUP_KIND = F({"group", "kind"})
LABEL_SELECTOR = F({"matchLabels", "matchExpressions"})
LABEL_SELECTOR_REQUIREMENT = F({"key", "operator", "values"})

BACKEND_SPEC = F({"endpoints"})  # gw.dev/v1alpha1 Backend
STATIC_ENDPOINT = F({"address", "port", "weight"})

REFERENCE_GRANT_SPEC = F({"from", "to"})
REFERENCE_GRANT_FROM = F({"group", "kind", "namespace"})
REFERENCE_GRANT_TO = F({"group", "kind", "name"})

# gw.dev/v1alpha1 BackendTrafficPolicy (gw.config.backend_policy): Envoy Gateway's names, gw's
# fleet-wide breaker, and the Gateway API's retry budget under either of its names.
BACKEND_TRAFFIC_POLICY_SPEC = F(
    {
        "targetRefs",
        "circuitBreaker",
        "healthCheck",
        "retry",
        "retryConstraint",
        "sessionPersistence",
        "loadBalancer",
        "telemetry",
    }
)
POLICY_TARGET_REF = F({"group", "kind", "name", "namespace", "sectionName"})
BACKEND_TLS_POLICY_SPEC = F({"targetRefs", "validation", "options"})
BACKEND_TLS_VALIDATION = F({"caCertificateRefs", "wellKnownCACertificates", "hostname", "subjectAltNames"})
LOCAL_OBJECT_REF = F({"group", "kind", "name"})
SUBJECT_ALT_NAME = F({"type", "hostname", "uri"})
CIRCUIT_BREAKER = F(
    {
        "maxConnections",
        "maxPendingRequests",
        "maxParallelRequests",
        "maxParallelRetries",
        "failureRatio",
        "slowCallDuration",
        "slowCallRatio",
        "window",
        "minimumRequests",
        "openDuration",
        "halfOpenRequests",
    }
)
HEALTH_CHECK = F({"passive", "active", "panicThreshold"})
PASSIVE_HEALTH_CHECK = F(
    {
        "consecutive5XxErrors",
        "consecutiveGatewayErrors",
        "consecutiveLocalOriginFailures",
        "interval",
        "baseEjectionTime",
        "maxEjectionPercent",
    }
)
ACTIVE_HEALTH_CHECK = F(
    {"type", "http", "interval", "timeout", "unhealthyThreshold", "healthyThreshold", "initialJitter"}
)
HTTP_HEALTH_CHECK = F({"path", "method", "hostname", "expectedStatuses"})
RETRY_CONSTRAINT = F({"budget", "minRetryRate"})
RETRY_BUDGET = F({"percent", "interval"})
RETRY_RATE = F({"count", "interval"})
LOAD_BALANCER = F({"type", "consistentHash", "slowStart", "endpointOverride", "zoneAware"})
CONSISTENT_HASH = F({"type", "header", "headers", "cookie", "queryParams", "tableSize"})
HASH_HEADER = F({"name"})
HASH_COOKIE = F({"name", "ttl", "attributes"})
HASH_QUERY_PARAM = F({"name"})
SLOW_START = F({"window"})
BACKEND_TELEMETRY = F({"tracing", "metrics"})
# Envoy Gateway's Tracing; samplingRate is EnvoyProxy's (ProxyTracing), known here to name it.
TRACING = F(
    {"samplingFraction", "clientSamplingFraction", "overallSamplingFraction", "customTags", "tags", "spanName"}
) | {"samplingRate"}

# gw.dev/v1alpha1 SecurityPolicy (gw.config.security_policy): Envoy Gateway's names. Every field of
# its spec is known, so that one gw does not serve yet is refused by name rather than dropped.
SECURITY_POLICY_SPEC = F(
    {
        "targetRef",
        "targetRefs",
        "targetSelectors",
        "mergeType",
        "apiKeyAuth",
        "cors",
        "csrf",
        "basicAuth",
        "jwt",
        "oidc",
        "extAuth",
        "authorization",
    }
)
API_KEY_AUTH = F({"credentialRefs", "extractFrom", "forwardClientIDHeader", "sanitize"})
EXTRACT_FROM = F({"headers", "params", "cookies"})
BASIC_AUTH = F({"users", "forwardUsernameHeader"})
AUTHORIZATION = F({"rules", "defaultAction"})
AUTHORIZATION_RULE = F({"name", "action", "operation", "principal", "cel"})
AUTHORIZATION_OPERATION = F({"methods", "path"})
PRINCIPAL = F({"clientCIDRs", "jwt", "headers", "clientIPGeoLocations"})
AUTHORIZATION_HEADER_MATCH = F({"name", "values"})
JWT_PRINCIPAL = F({"provider", "claims", "scopes"})
JWT_CLAIM_MATCH = F({"name", "valueType", "values"})
# A SecurityPolicy's `jwt` (gw.config.parse_jwt): Envoy Gateway's JWT, JWTProvider and their parts.
# remoteJWKS's backendRef(s)/backendSettings are known and refused: gw fetches the uri itself.
JWT = F({"optional", "failOpen", "providers"})
JWT_PROVIDER = F(
    {"name", "issuer", "audiences", "remoteJWKS", "localJWKS", "claimToHeaders", "recomputeRoute", "extractFrom"}
)
REMOTE_JWKS = F({"uri", "cacheDuration", "failedRefetchDuration", "backendRef", "backendRefs", "backendSettings"})
LOCAL_JWKS = F({"type", "inline", "valueRef"})
CLAIM_TO_HEADER = F({"header", "claim"})
JWT_EXTRACTOR = F({"headers", "cookies", "params"})
JWT_HEADER_EXTRACTOR = F({"name", "valuePrefix"})
