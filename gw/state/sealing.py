"""Seal the secret material of config files (AES-256-GCM under GW_CONFIG_KEYS) before it goes to Redis.

A file's secret fields (SECRET_FIELDS: a Secret's `data` and `stringData`) are cut out of its
YAML text and each replaced by one sealed scalar, `"gw.dev/sealed:v1:<key id>:<base64 nonce +
ciphertext>"`, so the rest of the config stays readable in Redis and opening restores the exact
bytes (the version's checksum is over the plain files). The associated data names the file, the
document, the object and the field, so a sealed value moved to another Secret does not open.
A file whose secret fields cannot be cut cleanly (not UTF-8, an alias reaching outside the
field, YAML the cut would break) is sealed whole instead: never in the clear.

The first key seals; every key opens (rotation: put a new key first, republish, drop the old one
once no kept version needs it). A key id is a short hash of the key, stored with each sealed value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# (kind, fields) whose values are secret material; a new kind that carries secrets joins here.
SECRET_FIELDS: dict[str, tuple[str, ...]] = {"Secret": ("data", "stringData")}

PREFIX = "gw.dev/sealed:v1:"
NONCE_SIZE = 12
KEY_SIZE = 32
FIELDS = "fields"  # a file's secret fields are sealed one by one
WHOLE = "file"  # the file is sealed whole
_AD = b"gw config sealed v1\0"
_WHOLE_FILE = "(whole file)"
_KEY_ID = re.compile(re.escape(PREFIX.encode()) + rb"([0-9a-f]{8}):")
_KINDS = tuple(kind.encode() for kind in SECRET_FIELDS)


class SealingError(Exception):
    """A sealed value cannot be opened."""


class KeyMissing(SealingError):
    """The value was sealed with a key the opener does not hold."""

    def __init__(self, key_id: str, where: str) -> None:
        super().__init__(f"{where} is sealed with key {key_id}, which GW_CONFIG_KEYS does not hold")
        self.key_id = key_id


class Tampered(SealingError):
    """The value does not open with its key: changed, or moved from another place."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"gw config key\0" + key).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class SealingKeys:
    """GW_CONFIG_KEYS: the first seals, all open."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys or any(len(k) != KEY_SIZE for k in self.keys):
            raise ValueError(f"config keys are {KEY_SIZE} bytes each, and there is at least one")

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(key_id(k) for k in self.keys)

    def seal(self, plain: bytes, where: str) -> str:
        key = self.keys[0]
        nonce = os.urandom(NONCE_SIZE)
        sealed = AESGCM(key).encrypt(nonce, plain, _AD + where.encode())
        return f"{PREFIX}{key_id(key)}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, token: str, where: str) -> bytes:
        kid, _, body = token.removeprefix(PREFIX).partition(":")
        key = next((k for k in self.keys if key_id(k) == kid), None)
        if key is None:
            raise KeyMissing(kid, where)
        try:
            raw = base64.b64decode(body, validate=True)
            return AESGCM(key).decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], _AD + where.encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise Tampered(f"{where}: the sealed value does not open (changed, or moved from elsewhere)") from None


def key_ids_in(data: bytes) -> set[str]:
    """The ids of the keys a stored file's sealed values need."""
    return {m.decode() for m in _KEY_ID.findall(data)}


def has_secrets(data: bytes) -> bool:
    """Whether a file may hold secret material (a cheap test before parsing)."""
    return any(kind in data for kind in _KINDS)


def seal_file(name: str, data: bytes, keys: SealingKeys) -> tuple[bytes, str] | None:
    """The file with its secret fields sealed and how (FIELDS or WHOLE); None when it has none."""
    if not has_secrets(data):
        return None
    try:
        text = data.decode("utf-8")
        cuts = list(_secret_fields(text, name, sealed=False))
    except (UnicodeDecodeError, yaml.YAMLError, _Unclean):
        return _seal_whole(name, data, keys), WHOLE
    if not cuts:
        return None
    out = text
    for start, end, where in reversed(cuts):
        plain = out[start:end]
        # The field's last newline stays outside the seal, so the sealed scalar ends its line.
        tail = "\n" if plain.endswith("\n") else ""
        token = keys.seal(plain.removesuffix(tail).encode(), where)
        out = f'{out[:start]}"{token}"{tail}{out[end:]}'
    sealed = out.encode()
    try:
        if open_file(name, sealed, FIELDS, keys) == data:
            return sealed, FIELDS
    except (SealingError, yaml.YAMLError, UnicodeDecodeError, _Unclean):
        pass
    return _seal_whole(name, data, keys), WHOLE


def open_file(name: str, data: bytes, how: str, keys: SealingKeys | None) -> bytes:
    """The file as it was before seal_file; KeyMissing or Tampered when it cannot be."""
    if how == WHOLE:
        token, where = data.decode("ascii", "replace"), f"{name} {_WHOLE_FILE}"
        return _require(keys, token, where).open(token, where)
    text = data.decode("utf-8")
    # Opened front to back (the first problem is the one reported), put back from the end (the
    # cuts' offsets hold until then).
    opened = []
    for start, end, where in _secret_fields(text, name, sealed=True):
        token = text[start:end].strip('"')
        opened.append((start, end, _require(keys, token, where).open(token, where).decode("utf-8")))
    out = text
    for start, end, plain in reversed(opened):
        out = out[:start] + plain + out[end:]
    return out.encode()


def redact(name: str, data: bytes, how: str | None) -> bytes:
    """The file with every secret field (sealed or not) replaced by a note saying it is hidden."""
    if how == WHOLE:
        return b"# sealed whole: its secret fields could not be sealed one by one; not shown\n"
    if not has_secrets(data):
        return data
    try:
        text = data.decode("utf-8")
        cuts = list(_secret_fields(text, name, sealed=None))
    except (UnicodeDecodeError, yaml.YAMLError, _Unclean):
        return b"# holds secret material in a form gw cannot cut out: not shown\n"
    out = text
    for start, end, where in reversed(cuts):
        tail = "\n" if out[start:end].endswith("\n") else ""
        out = f'{out[:start]}"(hidden: {where.rpartition(" ")[2]})"{tail}{out[end:]}'
    return out.encode()


def _require(keys: SealingKeys | None, token: str, where: str) -> SealingKeys:
    if keys is None:
        kid = token.removeprefix(PREFIX).partition(":")[0]
        raise KeyMissing(kid, where)
    return keys


class _Unclean(Exception):
    """A secret field's text range cannot be cut out on its own."""


def _secret_fields(text: str, file: str, *, sealed: bool | None) -> Iterator[tuple[int, int, str]]:
    """(start, end, where) of each secret field's value in `text`, in order.

    sealed=True: only values that are sealed scalars; False: only values that are not (and each
    must be cut cleanly: every node inside its range, or _Unclean); None: every one.
    """
    for index, doc in enumerate(yaml.compose_all(text, Loader=yaml.SafeLoader)):
        for item, obj in _objects(doc):
            kind = _scalar(obj, "kind")
            fields = SECRET_FIELDS.get(kind or "")
            if not fields:
                continue
            meta = _child(obj, "metadata")
            name = f"{_scalar(meta, 'namespace') or 'default'}/{_scalar(meta, 'name') or ''}"
            for key, value in obj.value:
                if not isinstance(key, yaml.ScalarNode) or key.value not in fields:
                    continue
                is_sealed = isinstance(value, yaml.ScalarNode) and str(value.value).startswith(PREFIX)
                if sealed is not None and is_sealed != sealed:
                    continue
                if isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null"):
                    continue  # `data:` with nothing: no secret to seal
                start, end = value.start_mark.index, value.end_mark.index
                if not sealed and not _within(value, start, end, key.end_mark.index):
                    raise _Unclean
                yield start, end, f"{file} document {index + 1}{item} {kind} {name} {key.value}"


def _objects(doc: yaml.Node | None) -> Iterator[tuple[str, yaml.MappingNode]]:
    """The document's object, or a `kind: List`'s items."""
    if not isinstance(doc, yaml.MappingNode):
        return
    items = _child(doc, "items") if _scalar(doc, "kind") == "List" else None
    if isinstance(items, yaml.SequenceNode):
        for i, node in enumerate(items.value):
            if isinstance(node, yaml.MappingNode):
                yield f" items[{i}]", node
    else:
        yield "", doc


def _child(node: yaml.Node | None, name: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == name), None)


def _scalar(node: yaml.Node | None, name: str) -> str | None:
    child = _child(node, name)
    return str(child.value) if isinstance(child, yaml.ScalarNode) else None


def _within(node: yaml.Node, start: int, end: int, after: int, seen: set[int] | None = None) -> bool:
    """Whether the node and everything it holds lie in [start, end) past its key (no alias out)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return True
    seen.add(id(node))
    if not (after <= node.start_mark.index and node.end_mark.index <= end and start <= node.start_mark.index):
        return False
    children: Sequence[yaml.Node]
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        return True
    return all(_within(child, start, end, after, seen) for child in children)


def _seal_whole(name: str, data: bytes, keys: SealingKeys) -> bytes:
    return keys.seal(data, f"{name} {_WHOLE_FILE}").encode()


def holds_secrets(name: str, data: bytes) -> bool:
    """Whether the file has secret fields to seal (a file that does not parse counts as holding some)."""
    if not has_secrets(data):
        return False
    try:
        return any(True for _ in _secret_fields(data.decode("utf-8"), name, sealed=None))
    except (UnicodeDecodeError, yaml.YAMLError, _Unclean):
        return True
