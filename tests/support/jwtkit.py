"""Test-side JWT issuing: real keys of every family, tokens signed with them, and a JWKS server whose keys rotate."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

_HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVE = {
    "ES256": (ec.SECP256R1, "P-256", 32),
    "ES384": (ec.SECP384R1, "P-384", 48),
    "ES512": (ec.SECP521R1, "P-521", 66),
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int, size: int | None = None) -> str:
    return b64(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))


@dataclass
class Signer:
    """A private key and the JWK of its public half."""

    alg: str  # the algorithm it signs with
    kid: str
    private: Any
    jwk_alg: bool = False  # put `alg` in the JWK
    jwk: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            nums = public.public_numbers()
            jwk: dict[str, Any] = {"kty": "RSA", "n": _uint(nums.n), "e": _uint(nums.e)}
        elif isinstance(public, ec.EllipticCurvePublicKey):
            _, crv, size = _CURVE[self.alg]
            nums = public.public_numbers()
            jwk = {"kty": "EC", "crv": crv, "x": _uint(nums.x, size), "y": _uint(nums.y, size)}
        else:
            raw = public.public_bytes_raw()
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        jwk["kid"] = self.kid
        jwk["use"] = "sig"
        if self.jwk_alg:
            jwk["alg"] = self.alg
        self.jwk = jwk

    def sign_input(self, data: bytes, alg: str | None = None) -> bytes:
        alg = alg or self.alg
        if alg.startswith("RS"):
            return self.private.sign(data, padding.PKCS1v15(), _HASH[alg[2:]]())
        if alg.startswith("PS"):
            h = _HASH[alg[2:]]()
            return self.private.sign(data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
        if alg.startswith("ES"):
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(_HASH[alg[2:]]())))
            size = _CURVE[alg][2]
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        return self.private.sign(data)

    def token(self, claims: dict[str, Any], **header: Any) -> bytes:
        head = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **header}
        return encode(head, claims, lambda data: self.sign_input(data, head["alg"]))


def make_signer(alg: str, kid: str | None = None, *, jwk_alg: bool = False) -> Signer:
    if alg[:2] in ("RS", "PS"):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg.startswith("ES"):
        private = ec.generate_private_key(_CURVE[alg][0]())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return Signer(alg, kid or f"{alg.lower()}-key", private, jwk_alg)


def encode(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> bytes:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}".encode()
    return signing_input + b"." + b64(sign(signing_input)).encode()


def hmac_token(secret: bytes, claims: dict[str, Any], alg: str = "HS256", **header: Any) -> bytes:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return encode({"alg": alg, **header}, claims, lambda data: hmac.new(secret, data, digest).digest())


def jwks(*signers: Signer) -> dict[str, Any]:
    return {"keys": [s.jwk for s in signers]}


class JWKSServer:
    """A real HTTP server answering GET with the current JWKS; counts fetches, may hang or go away."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        self.hang = False  # accept and read, never answer
        self.status = 200
        self.fetched = asyncio.Event()  # set on each fetch (clear it to await the next)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def start(self) -> JWKSServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every connection: the port refuses from now on."""
        if self._server is not None:
            self._server.close()
            for writer in self._open:  # a client's pooled keep-alive connection goes too
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"GET "):
                    break
                self.fetches += 1
                self.fetched.set()
                if self.hang:
                    await reader.read()  # until the client gives up
                    break
                body = json.dumps(self.document).encode()
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (self.status, len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()
