"""Typed, error-collecting access to the fields of one YAML object."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Set
from typing import Any

from gw.config.errors import ConfigError


class Reader:
    """Typed access to one object's fields; every problem becomes a ConfigError naming the field."""

    def __init__(self, file: str, label: str, errors: list[ConfigError]) -> None:
        self.file = file
        self.label = label
        self.errors = errors
        self.count = 0  # errors recorded by this reader; callers compare before/after a section

    def error(self, field: str, message: str) -> None:
        self.errors.append(ConfigError(self.file, self.label, field, message))
        self.count += 1

    def map(self, value: Any, field: str, fields: Set[str] | None = None) -> dict[str, Any]:
        """A mapping at `field`; with `fields`, a key outside them is an error (strict validation)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(field, f"must be a mapping, not {type_name(value)}")
            return {}
        if fields is not None:
            for key in value:
                if key not in fields:
                    self.error(join(field, str(key)), unknown_field(str(key), fields))
        return value

    def list(self, value: Any, field: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(field, f"must be a list, not {type_name(value)}")
            return []
        return value

    def str(
        self,
        obj: dict[str, Any],
        key: str,
        field: str,
        *,
        default: str | None = None,
        required: bool = False,
        check: Callable[[str], str | None] | None = None,
        choices: Iterable[str] | None = None,
    ) -> str | None:
        path = join(field, key)
        value = obj.get(key)
        if value is None:
            if required:
                self.error(path, "is required")
            return default
        if not isinstance(value, str):
            self.error(path, f"must be a string, not {type_name(value)}")
            return default
        if choices is not None and value not in choices:
            self.error(path, f"{value!r} is not one of {', '.join(sorted(choices))}")
            return default
        if check is not None:
            problem = check(value)
            if problem:
                self.error(path, problem)
                return default
        return value

    def int(
        self,
        obj: dict[str, Any],
        key: str,
        field: str,
        *,
        default: int | None = None,
        required: bool = False,
        lo: int | None = None,
        hi: int | None = None,
    ) -> int | None:
        path = join(field, key)
        value = obj.get(key)
        if value is None:
            if required:
                self.error(path, "is required")
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(path, f"must be an integer, not {type_name(value)}")
            return default
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.error(path, f"{value} is out of range [{lo}, {hi}]")
            return default
        return value


def unknown_field(key: str, fields: Set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(fields), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(fields))
    return f"is not a field of this object ({hint})"


def join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def string_map(r: Reader, raw: Any, field: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in r.map(raw, field).items():
        if not isinstance(value, str):
            r.error(f"{field}.{key}", "must be a string (quote numbers and booleans)")
            continue
        result[str(key)] = value
    return result
