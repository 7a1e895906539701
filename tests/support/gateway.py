"""Run the real gateway (`python -m gw run`) as a child process, and talk to it over raw sockets."""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httptools

REPO = Path(__file__).resolve().parents[2]


_RUNTIME_DIRS: list[str] = []


def runtime_dir() -> str:
    """A directory for a gateway's GW_RUNTIME_DIR, removed when the test run ends.

    Short, unlike tmp_path (a unix socket path has at most 107 bytes, and test names are long);
    a gateway started by one test may still be stopping in the next, hence at exit, not at teardown.
    """
    path = tempfile.mkdtemp(prefix="gw-rt-")
    _RUNTIME_DIRS.append(path)
    return path


@atexit.register
def _remove_runtime_dirs() -> None:
    for path in _RUNTIME_DIRS:
        shutil.rmtree(path, ignore_errors=True)


# Below the kernel's ephemeral range (32768-60999 here): a port handed out by bind(0) can be taken
# by any outgoing connection before the process it is meant for binds it ("Address already in
# use", seen under a loaded suite); these are never given to an outgoing connection.
PORTS = range(20000, 32768)
_handed: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, not handed out before in this process."""
    for _ in range(200):
        port = random.choice(PORTS)
        if port in _handed:
            continue
        try:
            for host in ("0.0.0.0", "127.0.0.1"):
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        _handed.add(port)
        return port
    with socket.socket() as s:  # the range is crowded: the kernel's pick, as before
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_yaml(
    port: int,
    backends: dict[str, list[tuple[str, int]]],
    routes: list[dict[str, object]],
) -> str:
    """A GatewayClass, a Gateway with one HTTP listener on `port`, static Backends and HTTPRoutes.

    routes: dicts with name, rules (Gateway API rules, backendRefs may name a Backend as
    {"backend": "name"}), optional hostnames and annotations.
    """
    import yaml

    docs: list[dict[str, object]] = [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": "gw"},
            "spec": {"controllerName": "gw.dev/gateway-controller"},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "test", "namespace": "default"},
            "spec": {"gatewayClassName": "gw", "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}]},
        },
    ]
    for name, endpoints in backends.items():
        docs.append(
            {
                "apiVersion": "gw.dev/v1alpha1",
                "kind": "Backend",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"endpoints": [{"address": a, "port": p} for a, p in endpoints]},
            }
        )
    for route in routes:
        rules = []
        for rule in route["rules"]:  # type: ignore[attr-defined]
            rule = dict(rule)
            rule["backendRefs"] = [
                {
                    "group": "gw.dev",
                    "kind": "Backend",
                    "name": ref["backend"],
                    **({"weight": ref["weight"]} if "weight" in ref else {}),
                }
                if "backend" in ref
                else ref
                for ref in rule.get("backendRefs", [])
            ]
            rules.append(rule)
        spec: dict[str, object] = {"parentRefs": [{"name": "test"}], "rules": rules}
        if route.get("hostnames"):
            spec["hostnames"] = route["hostnames"]
        meta: dict[str, object] = {"name": route["name"], "namespace": "default"}
        if route.get("annotations"):
            meta["annotations"] = route["annotations"]
        docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": meta, "spec": spec})
    return yaml.safe_dump_all(docs, sort_keys=False)


@dataclass
class GatewayProcess:
    """A running gateway. `port` serves HTTP, `admin` the admin endpoints; stderr is kept in `log`."""

    config_path: Path
    port: int
    admin: int
    env: dict[str, str]
    access_log: Path
    proc: subprocess.Popen[bytes] | None = None
    own_session: bool = False  # a process group of its own, as a terminal's foreground job has
    log: list[str] = field(default_factory=list)
    _serving: threading.Event = field(default_factory=threading.Event)
    _line_seen: threading.Condition = field(default_factory=threading.Condition)

    def environment(self) -> dict[str, str]:
        """The environment `gw run` gets: this process's, the test's GW_* variables and the defaults."""
        env = {**os.environ, **self.env}
        env.setdefault("GW_CONFIG", str(self.config_path))
        env.setdefault("GW_ADMIN_ADDR", f"127.0.0.1:{self.admin}")
        env.setdefault("GW_ACCESS_LOG", str(self.access_log))
        env.setdefault("GW_WORKERS", "1")  # one worker unless a test is about several
        env.setdefault("GW_DRAIN_TIMEOUT", "5s")
        # Its own embedded Valkey: a short directory (unix socket paths are limited to ~107 bytes).
        env.setdefault("GW_RUNTIME_DIR", runtime_dir())
        env["PYTHONPATH"] = str(REPO)
        return env

    def start(self) -> GatewayProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gw", "run"],
            env=self.environment(),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=self.own_session,
        )
        threading.Thread(target=self._read_stderr, daemon=True).start()
        # The supervisor prints "gw: serving" once every worker serves and the admin app is up.
        if not self._serving.wait(20) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("gateway did not start:\n" + "\n".join(self.log))
        return self

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            with self._line_seen:
                self.log.append(line)
                self._line_seen.notify_all()
            if line.startswith("gw: serving"):
                self._serving.set()

    def wait_for_log(self, prefix: str, after: int = 0, timeout: float = 10.0) -> str:
        """The first stderr line from index `after` on that starts with `prefix` (waits for it)."""
        with self._line_seen:
            found = self._line_seen.wait_for(
                lambda: next((x for x in self.log[after:] if x.startswith(prefix)), None), timeout
            )
        if found is None:
            raise AssertionError(f"no log line {prefix!r}:\n" + "\n".join(self.log))
        return found

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self) -> dict[str, object]:
        """The admin /status document."""
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.admin}/status", timeout=10).json()  # type: ignore[no-any-return]

    def worker_pids(self) -> list[int]:
        """The pids of the workers currently serving (by slot)."""
        workers = self.status()["workers"]
        return [w["pid"] for w in workers if w["state"] == "ready"]  # type: ignore[union-attr,index]

    @property
    def worker_pid(self) -> int:
        """The single worker's pid (tests run one worker unless they ask for more)."""
        pids = self.worker_pids()
        assert len(pids) == 1, pids
        return pids[0]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def connect(self, timeout: float = 10.0) -> Client:
        return Client(socket.create_connection(("127.0.0.1", self.port), timeout=timeout))


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    version: str = "1.1"

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None


class _ResponseReader:
    def __init__(self, head_request: bool = False) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.done = False
        self.head_request = head_request
        self.headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if self.head_request or 100 <= self.parser.get_status_code() < 200:
            self.done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class Client:
    """A raw HTTP/1.1 client connection: send exact bytes, read responses one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Response:
        fields = {"Host": "example.test", **(headers or {})}
        if body and "Content-Length" not in fields and "Transfer-Encoding" not in fields:
            fields["Content-Length"] = str(len(body))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        self.send(head.encode() + body)
        return self.read_response(head_request=method == "HEAD")

    def read_response(self, head_request: bool = False) -> Response:
        """Read exactly one response (interim 1xx responses count as one)."""
        reader = _ResponseReader(head_request)
        data = self.buffer
        self.buffer = b""
        while True:
            if data:
                try:
                    reader.parser.feed_data(data)
                except httptools.HttpParserUpgrade as upgrade:
                    self.buffer = data[upgrade.args[0] :]
                    break
                if reader.done:
                    # what the parser did not consume is not knowable from httptools; tests
                    # that pipeline read responses off one buffer through `read_all`.
                    break
            data = self.sock.recv(1 << 20)
            if not data:
                with contextlib.suppress(httptools.HttpParserError):
                    reader.parser.feed_data(b"")
                if not reader.done:
                    if reader.headers_done:
                        raise ConnectionError("connection closed mid-body: " + repr(b"".join(reader.body)[:80]))
                    raise ConnectionError("connection closed before a response")
                break
        return Response(reader.parser.get_status_code(), reader.headers, b"".join(reader.body))

    def read_until_close(self) -> bytes:
        chunks = [self.buffer]
        self.buffer = b""
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def closed_by_peer(self) -> bool:
        """True when the peer closed (EOF or reset) — waits up to the socket timeout."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def parse_responses(data: bytes) -> list[Response]:
    """Split a byte stream holding several responses (pipelining) into responses."""
    out: list[Response] = []
    current: dict[str, object] = {}

    class P:
        def on_message_begin(self) -> None:
            current.clear()
            current["headers"] = []
            current["body"] = []

        def on_header(self, n: bytes, v: bytes) -> None:
            current["headers"].append((n.decode(), v.decode()))  # type: ignore[union-attr]

        def on_body(self, b: bytes) -> None:
            current["body"].append(b)  # type: ignore[union-attr]

        def on_message_complete(self) -> None:
            out.append(Response(parser.get_status_code(), list(current["headers"]), b"".join(current["body"])))  # type: ignore[arg-type]

    parser = httptools.HttpResponseParser(P())
    parser.feed_data(data)
    return out


class Wire:
    """A client connection read byte-exactly: framing per RFC 9112 §6.3, whatever follows a
    response stays buffered for the next read. Catches stray bytes (a body after HEAD or 204)
    that `Client.read_response` cannot see."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        self.buffer += data
        return bool(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError("connection closed mid-line: " + repr(self.buffer[:80]))
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise ConnectionError(f"connection closed with {len(self.buffer)} of {n} bytes")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_head(self) -> Response:
        """The next response head (status line and fields); the body is left unread."""
        while not self.buffer:
            if not self._fill():
                raise ConnectionError("connection closed before a response")
        version, status, *_ = self._line().split(b" ", 2)
        headers: list[tuple[str, str]] = []
        while line := self._line():
            name, _, value = line.partition(b":")
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        return Response(int(status), headers, b"", version.decode().removeprefix("HTTP/"))

    def read_response(self, method: str = "GET") -> Response:
        """One complete response (a 1xx counts as one), body decoded from its framing."""
        resp = self.read_head()
        if method == "HEAD" or resp.status < 200 or resp.status in (204, 304):
            return resp
        if (resp.header("transfer-encoding") or "").lower() == "chunked":
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._exactly(size))
                if self._exactly(2) != b"\r\n":
                    raise ValueError("chunk data not followed by CRLF")
            while self._line():
                pass  # trailer fields
            resp.body = b"".join(parts)
        elif resp.header("content-length") is not None:
            resp.body = self._exactly(int(resp.header("content-length") or 0))
        else:
            resp.body = self.read_until_close()
        return resp

    def read_final(self, method: str = "GET") -> tuple[list[Response], Response]:
        """Interim (1xx) responses, then the final one."""
        interim = []
        while (resp := self.read_response(method)).status < 200:
            interim.append(resp)
        return interim, resp

    def read_until_close(self) -> bytes:
        while self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def closed_by_peer(self) -> bool:
        """True when the peer closed (EOF or reset) and sent nothing more — waits up to the socket timeout."""
        if self.buffer:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def wire(gateway: GatewayProcess, timeout: float = 10.0) -> Wire:
    """A fresh byte-exact connection to `gateway`."""
    return Wire(socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout))


def http_request(
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "1.1",
    host: str | None = "example.test",
) -> bytes:
    """The bytes of one request; Content-Length is added for a body unless a framing field is given."""
    fields = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {n.lower() for n, _ in fields}
    if host is not None and "host" not in names:
        fields.insert(0, ("Host", host))
    if body and not names & {"content-length", "transfer-encoding"}:
        fields.append(("Content-Length", str(len(body))))
    head = f"{method} {path} HTTP/{version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    return head.encode("latin-1") + body


def chunked(*pieces: bytes) -> bytes:
    """A chunked body of `pieces`, ended by the last chunk."""
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"
