"""The signed session cookie: round trip, tampering, expiry, key rotation, scope, Set-Cookie attributes."""

from __future__ import annotations

import base64

from gw.balancing.session_cookie import cookie_values, decode, encode, new_key, set_cookie

OLD, NEW = b"old-key-0123456789abcdef", b"new-key-0123456789abcdef"
NOW = 1_800_000_000.0


def test_a_cookie_names_its_endpoint() -> None:
    value = encode("10.0.0.7:8080", 0, NEW, scope="default/shop#0")
    assert decode(value, [NEW], NOW, scope="default/shop#0") == "10.0.0.7:8080"
    assert "=" not in value and ";" not in value  # a cookie-octet run, no quoting needed


def test_an_ipv6_endpoint_round_trips() -> None:
    assert decode(encode("fd00::1:8080", 0, NEW), [NEW], NOW) == "fd00::1:8080"


def test_a_tampered_cookie_is_ignored() -> None:
    value = encode("10.0.0.7:8080", 0, NEW)
    raw = bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    raw[1] ^= 1  # "10.0.0.7" → "11.0.0.7" with the old signature
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert decode(forged, [NEW], NOW) is None
    assert decode(value[:-2], [NEW], NOW) is None
    assert decode("not base64 !", [NEW], NOW) is None
    assert decode("", [NEW], NOW) is None


def test_an_expired_cookie_is_ignored() -> None:
    value = encode("10.0.0.7:8080", int(NOW) + 60, NEW)
    assert decode(value, [NEW], NOW + 59) == "10.0.0.7:8080"
    assert decode(value, [NEW], NOW + 60) is None


def test_keys_rotate_the_new_one_signs_and_the_old_one_still_verifies() -> None:
    issued_before = encode("10.0.0.7:8080", 0, OLD)
    keys = [NEW, OLD]  # GW_SESSION_KEYS=new,old
    assert decode(issued_before, keys, NOW) == "10.0.0.7:8080"
    assert decode(encode("10.0.0.8:8080", 0, keys[0]), [NEW], NOW) == "10.0.0.8:8080"
    assert decode(issued_before, [NEW], NOW) is None  # once the old key is retired


def test_a_cookie_of_another_rule_does_not_pin() -> None:
    value = encode("10.0.0.7:8080", 0, NEW, scope="default/shop#0")
    assert decode(value, [NEW], NOW, scope="default/shop#1") is None


def test_generated_keys_differ() -> None:
    assert len(new_key()) == 32 and new_key() != new_key()


def test_a_session_cookie_is_httponly_lax_and_path_scoped() -> None:
    field = set_cookie("gw-session-abc", "v", secure=False, path="/shop")
    assert field == b"gw-session-abc=v; Path=/shop; HttpOnly; SameSite=Lax"


def test_https_listeners_add_secure() -> None:
    assert b"; Secure;" in set_cookie("s", "v", secure=True)


def test_a_backend_level_cookie_leaves_path_unset() -> None:
    assert b"Path" not in set_cookie("s", "v", secure=False, path=None)


def test_a_permanent_cookie_has_max_age_and_expires() -> None:
    field = set_cookie("s", "v", secure=True, max_age=3600, now=NOW)
    assert b"Max-Age=3600" in field
    assert b"Expires=Fri, 15 Jan 2027 09:00:00 GMT" in field


def test_every_value_of_a_name_is_offered_in_order() -> None:
    header = b'a=1; s=first; b=2; s="second"'
    assert cookie_values(header, "s") == ["first", "second"]
    assert cookie_values(header, "missing") == []
