"""A TEST DOUBLE of an OpenID provider, served over real HTTP on a thread of its own.

Not a real provider: it knows one client, approves every authorization request at once (no user,
no consent page: /authorize redirects straight back to redirect_uri with a code and the state),
and issues RS256 ID tokens, opaque access tokens and refresh tokens. It does check what a real one
must for the gateway's half of the flow to be proven: the client's secret (client_secret_basic or
_post), that a code is used once, by the redirect_uri it was issued for, with the PKCE verifier of
its S256 challenge, and that a refresh token is one it issued. Knobs for the tests: `access_ttl`
(expires_in of the next tokens), `id_claims` (claims forced into the next ID tokens: a wrong nonce
or audience), `auth_method` (what discovery advertises). It records what it saw.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from tests.support.jwtkit import Signer, jwks, make_signer


class OIDCProviderDouble:
    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.key: Signer = make_signer("RS256", "idp-1")
        self.access_ttl = 3600
        self.id_claims: dict[str, Any] = {}
        self.auth_method = "client_secret_basic"
        self.subject = "alice"
        self.codes: dict[str, dict[str, str]] = {}
        self.refresh_tokens: set[str] = set()
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []  # grant type and outcome, never secrets
        self.access_tokens: list[str] = []
        self.end_sessions: list[dict[str, str]] = []
        self.refreshes = 0
        self.lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                double._get(self)

            def do_POST(self) -> None:
                double._post(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> OIDCProviderDouble:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- endpoints ---------------------------------------------------------------------------

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        query = dict(parse_qsl(url.query))
        if url.path == "/.well-known/openid-configuration":
            self._json(h, 200, {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "end_session_endpoint": f"{self.issuer}/end_session",
                "token_endpoint_auth_methods_supported": [self.auth_method],
                "code_challenge_methods_supported": ["S256"],
            })  # fmt: skip
        elif url.path == "/jwks":
            self._json(h, 200, jwks(self.key))
        elif url.path == "/authorize":
            with self.lock:
                self.authorize_requests.append(query)
            if query.get("client_id") != self.client_id or query.get("code_challenge_method") != "S256":
                self._json(h, 400, {"error": "invalid_request"})
                return
            code = secrets.token_urlsafe(16)
            with self.lock:
                self.codes[code] = query
            target = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query.get("state", "")})
            h.send_response(302)
            h.send_header("Location", target)
            h.send_header("Content-Length", "0")
            h.end_headers()
        elif url.path == "/end_session":
            with self.lock:
                self.end_sessions.append(query)
            self._json(h, 200, {"logged_out": True})
        else:
            self._json(h, 404, {"error": "not_found"})

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        form = dict(parse_qsl(h.rfile.read(length).decode()))
        if urlsplit(h.path).path != "/token":
            self._json(h, 404, {"error": "not_found"})
            return
        if not self._client_authenticated(h, form):
            self._token_outcome(form, "invalid_client")
            self._json(h, 401, {"error": "invalid_client"})
            return
        grant = form.get("grant_type")
        with self.lock:
            if grant == "authorization_code":
                issued = self.codes.pop(form.get("code", ""), None)  # a code is used once
                error = self._check_code(issued, form)
            elif grant == "refresh_token":
                issued = None
                error = "" if form.get("refresh_token") in self.refresh_tokens else "invalid_grant"
                if not error:
                    self.refreshes += 1
            else:
                issued, error = None, "unsupported_grant_type"
        self._token_outcome(form, error or "ok")
        if error:
            self._json(h, 400, {"error": error})
            return
        self._json(h, 200, self._tokens(issued))

    def _check_code(self, issued: dict[str, str] | None, form: dict[str, str]) -> str:
        if issued is None or issued.get("redirect_uri") != form.get("redirect_uri"):
            return "invalid_grant"
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        return "" if challenge == issued.get("code_challenge") else "invalid_grant"  # PKCE (RFC 7636 §4.6)

    def _client_authenticated(self, h: BaseHTTPRequestHandler, form: dict[str, str]) -> bool:
        auth = h.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            client, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        else:
            client, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client == self.client_id and secret == self.client_secret

    def _tokens(self, issued: dict[str, str] | None) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.client_id, "sub": self.subject, "iat": now, "exp": now + 3600,
                  "email": f"{self.subject}@example.test"}  # fmt: skip
        if issued is not None and "nonce" in issued:
            claims["nonce"] = issued["nonce"]
        claims.update(self.id_claims)
        access, refresh = f"at-{secrets.token_urlsafe(12)}", f"rt-{secrets.token_urlsafe(12)}"
        with self.lock:
            self.access_tokens.append(access)
            self.refresh_tokens.add(refresh)
        return {"access_token": access, "token_type": "Bearer", "expires_in": self.access_ttl,
                "refresh_token": refresh, "id_token": self.key.token(claims).decode()}  # fmt: skip

    def _token_outcome(self, form: dict[str, str], outcome: str) -> None:
        with self.lock:
            self.token_requests.append({"grant_type": form.get("grant_type", ""), "outcome": outcome})

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
