"""GW_REDIS_URL → an async redis-py client: standalone, TLS, unix socket, Sentinel or Cluster.

Schemes:
  redis://[user:pass@]host:port[/db]          rediss:// the same over TLS
  unix://[user:pass@]/path/to.sock[?db=N]
  redis+sentinel://[user:pass@]h:p[,h:p...]/service[?db=N]      rediss+sentinel:// over TLS
  redis+cluster://[user:pass@]h:p[,h:p...]                      rediss+cluster:// over TLS
The credentials are the data server's; Sentinels get `sentinel_password` (and `sentinel_username`)
from the query when they need their own. TLS options come from the query: ssl_ca_certs,
ssl_certfile, ssl_keyfile, ssl_cert_reqs (required|optional|none), ssl_check_hostname.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import ExponentialBackoff

# Control-plane calls (config follower, CLI) get these; request-path calls are bounded far
# tighter by RedisGuard's budget. Retries with a short backoff ride over a failover or a
# dropped connection; redis-py's default backoff starts at a second.
CONNECT_TIMEOUT = 1.0
SOCKET_TIMEOUT = 2.0
RETRIES = 3

Client = Redis | RedisCluster

_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


class RedisURLError(ValueError):
    """GW_REDIS_URL cannot be turned into a client; the message says which part is wrong."""


def connect(url: str, *, socket_timeout: float | None = SOCKET_TIMEOUT, retries: int = RETRIES) -> Client:
    """An async client for `url`. No I/O happens here: connections open on first use.

    Request-path clients want `retries=0`: RedisGuard's budget is shorter than a retry's backoff,
    and the breaker, not a retry loop, decides when Redis is worth asking again.
    """
    scheme = url.partition("://")[0]
    common: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": socket_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.01), retries),
    }
    if scheme in ("redis", "rediss", "unix"):
        return Redis.from_url(url, **common)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel(url, scheme.startswith("rediss"), common)
    if scheme in ("redis+cluster", "rediss+cluster"):
        return _cluster(url, scheme.startswith("rediss"), common)
    raise RedisURLError(f"unknown Redis URL scheme {scheme!r}")


def connect_request_path(url: str) -> Client:
    """The client of request-path calls: no socket timeout, no retries; RedisGuard bounds each call.

    A socket timeout would cost every call more than it saves: redis-py sends through
    asyncio.wait_for, which on Python 3.11 wraps the write in a task of its own (the command
    leaves a loop turn later, with the budget already running), and reads each reply of a
    pipeline under a timer of its own.
    """
    return connect(url, socket_timeout=None, retries=0)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


async def local_server_pid(client: Client) -> int | None:
    """The pid of the Redis server `client` talks to when it runs on this machine (a unix socket or
    a loopback address, as the embedded Valkey); None for a remote one, Sentinel or Cluster."""
    if not isinstance(client, Redis):
        return None
    pool = client.connection_pool
    if issubclass(pool.connection_class, SentinelManagedConnection):
        return None
    kwargs = pool.connection_kwargs
    if not kwargs.get("path") and kwargs.get("host") not in LOOPBACK:
        return None
    info = await client.info("server")
    return int(info.get("process_id") or 0) or None


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not port.isdigit():
            raise RedisURLError(f"not host:port: {item!r}")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _parts(url: str, tls: bool) -> tuple[list[tuple[str, int]], str, dict[str, str], dict[str, Any]]:
    """(hosts, path, query, connection kwargs of the data servers: credentials and TLS)."""
    split = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(split.query).items()}
    auth: dict[str, Any] = {}
    userinfo, sep, _ = split.netloc.rpartition("@")
    if sep:
        user, _, password = userinfo.partition(":")
        auth["username"] = unquote(user) or None
        auth["password"] = unquote(password) or None
    if tls:
        auth["ssl"] = True
        for name in _TLS_OPTIONS:
            if name in query:
                value: Any = query[name]
                if name == "ssl_check_hostname":
                    value = value.lower() in ("1", "true", "yes")
                auth[name] = value
    return _hosts(split.netloc), split.path.strip("/"), query, auth


class _SentinelConnection(SentinelManagedConnection):
    """A master connection that asks Sentinel for the address on every (re)connect.

    redis-py's in-command retry reconnects to the address the connection last had (redis-py
    #3874), i.e. to the dead master after a failover; asking Sentinel first makes the retry land
    on the promoted replica.
    """

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self.is_connected and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


class _SentinelSSLConnection(_SentinelConnection, SSLConnection):
    pass


def _sentinel(url: str, tls: bool, common: dict[str, Any]) -> Redis:
    hosts, service, query, auth = _parts(url, tls)
    if not service:
        raise RedisURLError(f"Sentinel URL names no service: {url!r} (redis+sentinel://h:p[,h:p]/service)")
    sentinel_kwargs = {k: v for k, v in {**common, **auth}.items() if k not in ("username", "password")}
    sentinel_kwargs["socket_timeout"] = sentinel_kwargs["socket_timeout"] or SOCKET_TIMEOUT  # never unbounded
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"]
        sentinel_kwargs["username"] = query.get("sentinel_username")
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **common, **auth)
    connection_class = _SentinelSSLConnection if tls else _SentinelConnection
    return sentinel.master_for(service, db=int(query.get("db", 0)), connection_class=connection_class)


def _cluster(url: str, tls: bool, common: dict[str, Any]) -> RedisCluster:
    hosts, _, _, auth = _parts(url, tls)
    return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in hosts], **common, **auth)
