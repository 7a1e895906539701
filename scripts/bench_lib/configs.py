"""Configuration text for the benchmark's upstream, the nginx reference proxy and gw."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

# 12 bytes, as in the measurements docs/architecture.md cites: per-request overhead dominates.
UPSTREAM_BODY = "hello world\n"
GW_CONTROLLER = "gw.dev/gateway-controller"


def _nginx_common(tmp: Path, name: str) -> str:
    # Every path nginx might write goes into the temp dir so that the Debian defaults
    # (/var/log/nginx, /var/lib/nginx) are never touched and parallel runs cannot collide.
    return f"""
worker_processes 1;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 4096; }}
"""


def _nginx_http_common(tmp: Path, name: str, access_log: bool) -> str:
    log = f"access_log {tmp}/{name}-access.log;" if access_log else "access_log off;"
    return f"""
    {log}
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fastcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
    # wrk keeps its 64 connections for the whole run: never make it reconnect.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
"""


def nginx_upstream_conf(tmp: Path, port: int) -> str:
    body = UPSTREAM_BODY.replace("\n", "\\n")
    return _nginx_common(tmp, "upstream") + f"""
http {{
{_nginx_http_common(tmp, "upstream", access_log=False)}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"""


def nginx_proxy_conf(tmp: Path, port: int, upstream_port: int, access_log: bool) -> str:
    # proxy_http_version 1.1 plus an empty Connection header is what makes nginx reuse
    # upstream connections; `keepalive 64` matches wrk's connection count.
    return _nginx_common(tmp, "proxy") + f"""
http {{
{_nginx_http_common(tmp, "proxy", access_log=access_log)}
    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Target:
    """What wrk asks for: the path and Host that select the route under test."""

    path: str
    host: str | None


def gw_config(port: int, upstream_port: int, routes: int) -> tuple[str, Target]:
    """Gateway API YAML for gw, and the request that exercises the last (hardest to find) route.

    With routes == 1 it is a single catch-all HTTPRoute. With more, route i gets host
    h{i % H}.bench.test (H = ceil(sqrt(routes))) and PathPrefix /r{i}, so that both the host
    index and the per-host matcher list grow with N; a linear scan anywhere shows up as lost req/s.
    """
    docs = [f"""apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: gw}}
spec: {{controllerName: {GW_CONTROLLER}}}
""", f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: bench, namespace: default}}
spec:
  gatewayClassName: gw
  listeners:
  - {{name: http, protocol: HTTP, port: {port}}}
""", f"""apiVersion: gw.dev/v1alpha1
kind: Backend
metadata: {{name: upstream, namespace: default}}
spec:
  endpoints:
  - {{address: 127.0.0.1, port: {upstream_port}}}
"""]
    route = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs:
  - {{name: bench}}
{hostnames}  rules:
  - matches:
    - path: {{type: PathPrefix, value: {prefix}}}
    backendRefs:
    - {{group: gw.dev, kind: Backend, name: upstream}}
"""
    if routes <= 1:
        docs.append(route.format(name="bench", hostnames="", prefix="/"))
        return "---\n".join(docs), Target(path="/", host=None)
    hosts = math.isqrt(routes - 1) + 1
    for i in range(routes):
        docs.append(route.format(
            name=f"r{i}", hostnames=f"  hostnames: [h{i % hosts}.bench.test]\n", prefix=f"/r{i}",
        ))
    last = routes - 1
    return "---\n".join(docs), Target(path=f"/r{last}/x", host=f"h{last % hosts}.bench.test")


def vary_script(routes: int) -> str:
    """A wrk Lua script asking for a random route's path and host on every request.

    Every request then differs from the one before on the same connection, so gw's per-connection
    memos (head analysis, lookup) never answer and each request pays the full head analysis and
    host and path lookup: the honest way to compare 1, 100 and 10 000 routes. With one route, hosts
    and paths vary just as much (100 hosts) under its catch-all route, so only the table differs.
    """
    hosts = math.isqrt(routes - 1) + 1 if routes > 1 else 100
    count = routes if routes > 1 else 10000
    return f"""-- generated by scripts/bench --vary-targets
math.randomseed(42)
request = function()
  local i = math.random(0, {count - 1})
  return wrk.format("GET", "/r" .. i .. "/x", {{Host = "h" .. (i % {hosts}) .. ".bench.test"}})
end
"""
