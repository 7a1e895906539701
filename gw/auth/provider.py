"""A JWT provider as configured: Envoy Gateway's `jwt.providers[]` fields, parsed (gw.config.parse_jwt)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Envoy Gateway's defaults: a JWKS is kept 5 minutes; a failed fetch is retried after 1 second.
CACHE_DURATION = 300.0
FAILED_REFETCH_DURATION = 1.0


@dataclass(frozen=True, slots=True)
class RemoteJWKS:
    uri: str
    cache_duration: float = CACHE_DURATION  # seconds
    failed_refetch_duration: float = FAILED_REFETCH_DURATION


@dataclass(frozen=True, slots=True)
class LocalJWKS:
    inline: str  # the JWKS document (JSON); checked when parsed


@dataclass(frozen=True, slots=True)
class ClaimToHeader:
    header: str  # lower case
    claim: str  # a top-level claim, or a dotted path into nested objects ("org.team")


@dataclass(frozen=True, slots=True)
class HeaderExtractor:
    name: str  # lower case
    value_prefix: str = ""  # stripped before the token, compared without regard to case ("Bearer ")
    # The same as bytes, lower case, for the per-request lookup (gw.auth.jwt.find_token).
    lname: bytes = field(init=False, repr=False, compare=False)
    lprefix: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lname", self.name.lower().encode("ascii"))
        object.__setattr__(self, "lprefix", self.value_prefix.lower().encode("ascii"))


@dataclass(frozen=True, slots=True)
class ExtractFrom:
    headers: tuple[HeaderExtractor, ...] = ()
    cookies: tuple[str, ...] = ()
    params: tuple[str, ...] = ()


# Without extractFrom, Envoy Gateway reads `Authorization: Bearer <token>` or `?access_token=<token>`.
DEFAULT_EXTRACT_FROM = ExtractFrom(headers=(HeaderExtractor("authorization", "Bearer "),), params=("access_token",))


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    issuer: str | None = None  # None: `iss` is not checked
    audiences: tuple[str, ...] = ()  # empty: `aud` is not checked
    remote_jwks: RemoteJWKS | None = None  # exactly one of remote_jwks and local_jwks
    local_jwks: LocalJWKS | None = None
    claim_to_headers: tuple[ClaimToHeader, ...] = ()
    recompute_route: bool = False
    extract_from: ExtractFrom = field(default=DEFAULT_EXTRACT_FROM)


@dataclass(frozen=True, slots=True)
class JWT:
    """A SecurityPolicy's `jwt`: a token is accepted when any of the providers verifies it."""

    providers: tuple[Provider, ...]
    optional: bool = False  # a request without a token passes (one with a bad token does not)
    fail_open: bool = False  # a request with a missing or bad token passes (a good one still counts)
