"""Process-wide tuning read from GW_* environment variables, validated once at start-up."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A GW_* variable has a value gw cannot use; the message names the variable."""


UNIX_PATH_MAX = 107  # sun_path is 108 bytes with its terminating NUL

_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


def parse_size(text: str) -> int:
    """'64Ki', '10M', '1048576' → bytes (Kubernetes quantity suffixes)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]i?)?\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 1048576, 64Ki, 10Mi, 1G)")
    return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]


def parse_duration(text: str) -> float:
    """'250ms', '5s', '2m', '1.5' (seconds) → seconds, as Gateway API durations are written."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 5s, 2m)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or ""]


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port: {text!r} (use e.g. 127.0.0.1:9901)")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_ip_address(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r} (use e.g. 0.0.0.0, 127.0.0.1 or ::)") from None


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true/false)")


def parse_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r} (a fraction from 0 to 1, e.g. 0.1)") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"not between 0 and 1: {text!r}")
    return value


def parse_admin_token(text: str) -> str:
    """A bearer token: visible ASCII without spaces (RFC 6750's token68), long enough not to be guessed."""
    token = text.strip()
    if token and not re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", token):
        raise ValueError("not a bearer token (letters, digits and -._~+/ only; e.g. `openssl rand -hex 32`)")
    if token and len(token) < 16:
        raise ValueError("shorter than 16 characters (use e.g. `openssl rand -hex 32`)")
    return token


def parse_http_url(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {text!r} (use e.g. http://otel-collector:4318)")
    return text


def parse_positive_duration(text: str) -> float:
    """A duration that must not be zero (a zero budget or poll interval would spin or fail everything)."""
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("must be longer than zero")
    return value


def parse_integer(text: str) -> int:
    """A whole number, as int() reads it, with an error that says what was expected."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r} (use e.g. 4)") from None


def parse_port_offset(text: str) -> int:
    value = parse_integer(text)
    if not -65535 < value < 65535:
        raise ValueError("must be between -65534 and 65534")
    return value


def parse_positive_int(text: str) -> int:
    value = parse_integer(text)
    if value <= 0:
        raise ValueError(f"must be a positive integer: {text!r}")
    return value


def parse_non_negative_int(text: str) -> int:
    value = parse_integer(text)
    if value < 0:
        raise ValueError(f"must be zero or a positive integer: {text!r}")
    return value


def parse_gateway_key(text: str) -> str:
    namespace, sep, name = text.strip().partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"not namespace/name: {text!r}")
    return f"{namespace}/{name}"


def parse_redis_url(text: str) -> str:
    """A URL gw.state.connect accepts, checked by building its client (no I/O happens there)."""
    text = text.strip()
    schemes = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://", "redis+cluster://",
               "rediss+cluster://")
    if not text.startswith(schemes):
        raise ValueError(f"not a Redis URL: {text!r} (schemes: {', '.join(s.rstrip(':/') for s in schemes)})")
    from gw.state.connect import connect  # redis-py is imported only when a URL is given

    try:
        connect(text)
    except ValueError as exc:  # RedisURLError, and redis-py's own (a port or db that is no number)
        raise ValueError(f"not a usable Redis URL: {exc}") from None
    # What redis-py lets through without a word: it would connect to "" or silently use db 0.
    parts = urlsplit(text)
    if parts.scheme == "unix" and not parts.path:
        raise ValueError("no socket path (unix:///path/to.sock)")
    database = parts.path.strip("/")
    if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
        raise ValueError(f"the database is not a number: {database!r}")
    return text


def parse_key_prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", text):
        raise ValueError(f"not a key prefix: {text!r} (letters, digits, _ . : -; at most 64)")
    return text


def parse_session_keys(text: str) -> tuple[bytes, ...]:
    keys = tuple(k.strip().encode() for k in text.split(",") if k.strip())
    if not keys:
        raise ValueError("no key (a comma-separated list of secrets)")
    short = [i for i, k in enumerate(keys) if len(k) < 16]
    if short:
        raise ValueError(f"key {short[0] + 1} is shorter than 16 bytes (use e.g. `openssl rand -hex 32`)")
    return keys


def parse_config_keys(text: str) -> tuple[bytes, ...]:
    """Comma-separated 32-byte keys, each as 64 hex digits or base64 (`openssl rand -base64 32`)."""
    keys: list[bytes] = []
    for i, item in enumerate((k.strip() for k in text.split(",") if k.strip()), 1):
        if re.fullmatch(r"[0-9a-fA-F]{64}", item):
            keys.append(bytes.fromhex(item))
            continue
        try:
            standard = item.replace("-", "+").replace("_", "/")  # the URL-safe alphabet too
            key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ValueError(
                f"key {i} is not 32 bytes as 64 hex digits or base64 (make one with `openssl rand -base64 32`)"
            )
        keys.append(key)
    if not keys:
        raise ValueError("no key (a comma-separated list of 32-byte keys, e.g. `openssl rand -base64 32`)")
    return tuple(keys)


def _var(default: Any, parse: Callable[[str], Any], doc: str, *, secret: bool = False) -> Any:
    from dataclasses import field

    return field(default=default, repr=not secret, metadata={"parse": parse, "doc": doc})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every GW_* variable, its default and meaning. The README table is generated from this."""

    config: str = _var("", str, "Gateway API YAML file or directory to serve.")
    controller_name: str = _var(
        "gw.dev/gateway-controller",
        str,
        "GatewayClass controllerName gw serves; Gateways of other classes are left alone.",
    )
    gateway: str = _var(
        "", parse_gateway_key, "Serve only this Gateway (namespace/name); empty: every Gateway of gw's classes."
    )
    admin_addr: tuple[str, int] = _var(
        ("127.0.0.1", 9901),
        parse_addr,
        "Admin endpoint address (/healthz, /readyz, /metrics, /status, /fleet, /dashboard); private by default.",
    )
    admin_token: str = _var(
        "",
        parse_admin_token,
        "Bearer token the admin endpoints ask for (`Authorization: Bearer TOKEN`), all but /healthz, "
        "/readyz and /metrics. Empty: on a loopback GW_ADMIN_ADDR none is asked; on any other address "
        "only loopback peers (a shell in the pod, `kubectl port-forward`) get the rest, others 403.",
        secret=True,
    )
    listener_address: str = _var(
        "0.0.0.0",
        parse_ip_address,
        "Address the listeners bind (`::` for IPv6 and IPv4, `127.0.0.1` for this host only); `gw demo` binds "
        "127.0.0.1 unless it is set.",
    )
    share_ports: bool = _var(
        False,
        parse_bool,
        "Join listener ports another process already listens on with SO_REUSEPORT (the same user's), "
        "splitting their connections: replicas of one fleet on one host. Off: such a port stops "
        "start-up (and a reload), naming it and its process.",
    )
    listener_port_offset: int = _var(
        0,
        parse_port_offset,
        "Added to every listener port when binding (10000 maps 80 to 10080). Everything else speaks of "
        "the declared port: redirects' `Location`, `X-Forwarded-Port`, status (the offset is for a "
        "container whose declared ports a Service or load balancer maps back).",
    )
    access_log: str = _var("stdout", str, "Access log destination: stdout, stderr, off, or a file path.")
    access_log_sample: float = _var(1.0, parse_fraction, "Fraction of requests written to the access log.")
    otlp_endpoint: str = _var(
        "",
        parse_http_url,
        "OTLP/HTTP collector that receives spans (OTLP/JSON POSTed to `<url>/v1/traces`, e.g. "
        "`http://otel-collector:4318`); empty: no tracing, a client's `traceparent` is forwarded untouched.",
    )
    trace_sample: float = _var(
        0.0,
        parse_fraction,
        "Fraction of requests without a sampled parent that start a recorded trace (parent-based: a "
        "`traceparent` whose sampled flag is set is always recorded, one without it never). Needs GW_OTLP_ENDPOINT. "
        "A rule may have its own: a BackendTrafficPolicy's `telemetry.tracing.samplingFraction` (Tracing per route).",
    )
    otlp_timeout: float = _var(5.0, parse_positive_duration, "Time the span exporter waits on the collector per batch.")
    max_connections: int = _var(10000, parse_positive_int, "Open client connections per worker.")
    max_request_line: int = _var(8192, parse_size, "Longest request line (method, target, version): 414.")
    max_header_size: int = _var(32768, parse_size, "Largest request header block: 431.")
    max_body_size: int = _var(
        0, parse_size, "Default request body limit (0 = none); annotation gw.dev/max-body-size per HTTPRoute: 413."
    )
    header_timeout: float = _var(10.0, parse_positive_duration, "Time to receive a request's headers: 408.")
    body_timeout: float = _var(
        60.0,
        parse_positive_duration,
        "Longest pause between two reads of a request body (or before its first byte): 408.",
    )
    keepalive_timeout: float = _var(75.0, parse_duration, "Idle client keep-alive connection lifetime.")
    upstream_connect_timeout: float = _var(5.0, parse_positive_duration, "Upstream connect timeout: 504.")
    upstream_response_timeout: float = _var(
        60.0,
        parse_positive_duration,
        "Time from request sent to response headers received: 504. Also the longest a policy may keep a"
        " request waiting before it goes upstream (504 `phase-timeout`; a rate limit's own bound is"
        " `GW_REDIS_BUDGET`).",
    )
    upstream_max_idle: int = _var(64, parse_non_negative_int, "Idle connections kept per endpoint.")
    upstream_idle_timeout: float = _var(60.0, parse_duration, "Idle upstream connection lifetime.")
    upstream_max_requests: int = _var(
        10000, parse_positive_int, "Requests per upstream connection before it is retired."
    )
    tunnel_idle_timeout: float = _var(
        3600.0, parse_positive_duration, "Idle timeout of upgraded (WebSocket) connections."
    )
    endpoint_eject_time: float = _var(
        5.0, parse_duration, "How long an endpoint that refused a connection is skipped."
    )

    # Processes (supervisor)
    workers: int = _var(
        0, parse_non_negative_int, "Proxy worker processes; 0: the CPUs this process may use (cgroup quota honoured)."
    )
    drain_timeout: float = _var(
        30.0, parse_duration, "Graceful shutdown and worker replacement: time in-flight requests get to finish."
    )
    worker_max_rss: int = _var(0, parse_size, "A worker whose RSS exceeds this is replaced gracefully (0 = no limit).")
    # Shared state (Redis / Valkey)
    redis_url: str = _var(
        "",
        parse_redis_url,
        "redis://, rediss://, unix://, redis+sentinel://h:p[,h:p]/service, redis+cluster://h:p[,h:p]; "
        "empty: start the embedded Valkey on a unix socket.",
    )
    redis_prefix: str = _var("gw", parse_key_prefix, "Prefix of every Redis key and channel gw uses.")
    redis_budget: float = _var(
        0.005,
        parse_positive_duration,
        "Time budget of a Redis call on a request path; beyond it the call is abandoned.",
    )
    config_history: int = _var(50, parse_positive_int, "Config versions kept in Redis for `gw config rollback`.")
    config_poll_interval: float = _var(
        5.0,
        parse_positive_duration,
        "The supervisor polls the current config version this often (heals missed change events).",
    )
    runtime_dir: str = _var(
        "",
        str,
        "Directory for the embedded Valkey's socket and log (the log is removed when it stops cleanly); "
        "empty: $XDG_RUNTIME_DIR or the temp dir.",
    )
    session_keys: tuple[bytes, ...] = _var(
        (),
        parse_session_keys,
        "Secrets signing session-persistence cookies, comma-separated, each at least 16 bytes: the first "
        "signs, all verify (rotate by putting the new key first); every replica needs the same list. "
        "Empty: one random key is generated once and kept in Redis under GW_REDIS_PREFIX, shared by the fleet.",
        secret=True,
    )
    config_keys: tuple[bytes, ...] = _var(
        (),
        parse_config_keys,
        "Keys sealing the secret material (Secrets' data) of config versions in Redis (AES-256-GCM), "
        "comma-separated, each 32 bytes as base64 or 64 hex digits (`openssl rand -base64 32`): the first "
        "seals, all open (rotate: put the new key first everywhere, run `gw config reseal`, then drop the "
        "old key). Every replica, the controller and `gw config` need the list, from a Kubernetes Secret. "
        "Empty: Secrets are stored in the clear (a warning says so).",
        secret=True,
    )

    # The cluster controller (`gw controller`)
    controller_debounce: float = _var(
        0.2,
        parse_duration,
        "`gw controller`: quiet time after a cluster change before the config is rendered and published "
        "(a burst of changes makes one version).",
    )
    controller_debounce_max: float = _var(
        2.0,
        parse_positive_duration,
        "`gw controller`: longest a change waits for the quiet time while changes keep coming.",
    )
    gateway_service: str = _var(
        "",
        parse_gateway_key,
        "`gw controller`: the Service (namespace/name) in front of the gateway replicas; its load-balancer "
        "addresses become the Gateways' status.addresses. Empty: no addresses written.",
    )
    leader_election: bool = _var(
        True, parse_bool, "`gw controller`: elect one active controller with a Lease (false: a single controller)."
    )
    leader_election_namespace: str = _var(
        "", str, "`gw controller`: namespace of the Lease; empty: the pod's namespace (default outside a cluster)."
    )
    leader_election_name: str = _var("gw-controller", str, "`gw controller`: name of the Lease.")
    leader_election_lease_duration: float = _var(
        15.0,
        parse_positive_duration,
        "`gw controller`: how long a leader's Lease holds without renewal; a follower takes over after it.",
    )
    leader_election_renew_deadline: float = _var(
        10.0,
        parse_positive_duration,
        "`gw controller`: a leader that could not renew its Lease for this long stops publishing.",
    )
    leader_election_retry_period: float = _var(
        2.0, parse_positive_duration, "`gw controller`: how often the Lease is renewed or tried."
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = "GW_" + f.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                shown = repr(raw) if f.repr else "(secret)"  # a secret's value stays out of logs
                raise SettingsError(f"{name}={shown}: {exc}") from None
        return cls(**values)

    @classmethod
    def table(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) rows for documentation."""
        rows = []
        for f in fields(cls):
            default = f.default
            if default == ():
                default = ""
            elif isinstance(default, tuple):
                default = f"{default[0]}:{default[1]}"
            elif f.metadata["parse"] in (parse_duration, parse_positive_duration):
                default = f"{default:g}s"
            rows.append(("GW_" + f.name.upper(), str(default), f.metadata["doc"]))
        return rows


def check_paths(settings: Settings) -> None:
    """What only this machine can say about the settings, checked before anything starts.

    The access log file must open for appending (each worker opens it; one that cannot would die
    at start), and GW_RUNTIME_DIR, when the embedded Valkey will use it, must be a directory we can
    create a unix socket in.
    """
    log = settings.access_log
    if log not in ("stdout", "stderr", "off") and settings.access_log_sample > 0:
        try:
            with open(log, "ab"):
                pass
        except OSError as exc:
            raise SettingsError(f"GW_ACCESS_LOG={log!r}: cannot open it for appending: {exc.strerror}") from None
    directory = settings.runtime_dir
    if directory and not settings.redis_url:
        from gw.state.embedded import socket_path

        if len(os.fsencode(socket_path(settings))) > UNIX_PATH_MAX:
            raise SettingsError(
                f"GW_RUNTIME_DIR={directory!r}: too long for a unix socket path ({UNIX_PATH_MAX} bytes at most)"
            )
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise SettingsError(f"GW_RUNTIME_DIR={directory!r}: cannot create the directory: {exc.strerror}") from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise SettingsError(f"GW_RUNTIME_DIR={directory!r}: the directory is not writable")
