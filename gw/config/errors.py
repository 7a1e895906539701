"""Config errors and Gateway API-style status conditions: every problem names file, object and field."""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(Exception):
    """A problem in the config. Raised when the whole config is unusable, collected otherwise.

    `obj` is "Kind namespace/name" (empty for file-level problems such as a YAML syntax error),
    `field` a path into the object such as "spec.rules[0].backendRefs[1].name".
    """

    def __init__(self, file: str, obj: str, field: str, message: str) -> None:
        super().__init__(message)
        self.file = file
        self.obj = obj
        self.field = field
        self.message = message

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.obj, self.field) if p]
        parts.append(self.message)
        return ": ".join(parts)

    def __repr__(self) -> str:
        return f"ConfigError({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigError):
            return NotImplemented
        return (self.file, self.obj, self.field, self.message) == (
            other.file,
            other.obj,
            other.field,
            other.message,
        )

    def __hash__(self) -> int:
        return hash((self.file, self.obj, self.field, self.message))


@dataclass(frozen=True, slots=True)
class Condition:
    """One status condition as the Gateway API writes it (type Accepted/ResolvedRefs/Programmed)."""

    type: str
    status: bool
    reason: str
    message: str = ""
    parent: str = ""  # for route conditions: the "Gateway ns/name" (and "/listener") they are about

    def __str__(self) -> str:
        where = f" [{self.parent}]" if self.parent else ""
        text = f"{self.type}={'True' if self.status else 'False'} ({self.reason}){where}"
        return f"{text}: {self.message}" if self.message else text
