"""Declarative checks for the TOML tables of the agent's config file and of board files, written once.

A table is declared as data, a Schema: each key a Field (Number, Integer, String, Boolean, StringList)
with its default, limits and a one-line description; checks that involve several keys are hooks run after
the fields. A TableReader reads one table against a schema and fails with one line that names the file,
the table and the key, e.g.
    board-configs/x.toml: [[connectors]][0].max_current_a: must be between 6 and 80 A, got 100
    /etc/evse-agent/config.toml: [charging] max_current_a: must be between 6 and 80, got 100
Unknown keys are refused, with a "did you mean" when one is close. Standard library only: the control
process runs `python -S` and imports this.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED: Any = _Marker("REQUIRED")  # a field's default: the key must be given
OMITTED: Any = _Marker("OMITTED")  # a field's default: an absent key is left out of the result


def show(value: object) -> str:
    """A TOML value as the user wrote it, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date/time"


class Invalid(ValueError):
    """Raised by a field's parse() or a String check with the reason; the reader adds file, table and key."""


@dataclass(frozen=True, kw_only=True)
class Field:
    default: Any = REQUIRED
    doc: str = ""
    kind: ClassVar[str] = ""

    def parse(self, value: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Number(Field):
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # exclusive minimum
    unit: str = ""
    kind: ClassVar[str] = "number"

    def parse(self, value: Any) -> float:
        # bool is a subclass of int in Python, but `true` is not a number in TOML.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"expected a number, got {show(value)}")
        if not math.isfinite(value):
            raise Invalid(f"expected a finite number, got {show(value)}")
        _check_range(value, self.minimum, self.maximum, self.unit)
        if self.above is not None and value <= self.above:
            raise Invalid(f"must be greater than {self.above:g}{_suffix(self.unit)}, got {value}")
        return float(value)


@dataclass(frozen=True, kw_only=True)
class Integer(Field):
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[int, ...] | None = None
    unit: str = ""
    kind: ClassVar[str] = "integer"

    def parse(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {show(value)}")
        if self.choices is not None and value not in self.choices:
            *rest, last = (str(c) for c in self.choices)
            raise Invalid(f"must be {', '.join(rest) + ' or ' if rest else ''}{last}, got {value}")
        _check_range(value, self.minimum, self.maximum, self.unit)
        return value


@dataclass(frozen=True, kw_only=True)
class String(Field):
    choices: tuple[str, ...] | None = None
    empty_ok: bool = False
    example: str | None = None  # shown when the key is required and missing
    check: Callable[[str], str] | None = None  # returns the value to keep or raises ValueError with the reason
    kind: ClassVar[str] = "string"

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"expected a string, got {show(value)}")
        if self.choices is not None and value not in self.choices:
            raise Invalid(f"must be one of {', '.join(json.dumps(c) for c in self.choices)}, got {show(value)}")
        if not self.empty_ok and not value.strip():
            raise Invalid("must not be empty")
        return value if self.check is None else self.check(value)


@dataclass(frozen=True, kw_only=True)
class Boolean(Field):
    kind: ClassVar[str] = "boolean"

    def parse(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise Invalid(f"expected true or false, got {show(value)}")
        return value


@dataclass(frozen=True, kw_only=True)
class StringList(Field):
    kind: ClassVar[str] = "array of strings"

    def parse(self, value: Any) -> list[str]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise Invalid(f"expected a non-empty array of non-empty strings, got {show(value)}")
        return list(value)


def _suffix(unit: str) -> str:
    return f" {unit}" if unit else ""


def _check_range(value: float, minimum: float | None, maximum: float | None, unit: str) -> None:
    if minimum is not None and maximum is not None:
        if not minimum <= value <= maximum:
            raise Invalid(f"must be between {minimum:g} and {maximum:g}{_suffix(unit)}, got {value}")
    elif minimum is not None and value < minimum:
        raise Invalid(f"must be at least {minimum:g}{_suffix(unit)}, got {value}")
    elif maximum is not None and value > maximum:
        raise Invalid(f"must be at most {maximum:g}{_suffix(unit)}, got {value}")


# check(reader, values): the reader is the caller's TableReader (subclass), hence Any
Check = Callable[[Any, dict[str, Any]], None]


@dataclass(frozen=True)
class Schema:
    """The keys of one table, and checks across keys: check(table, values) may change values or raise
    table.error(key, reason)."""

    fields: Mapping[str, Field]
    checks: tuple[Check, ...] = field(default=())


class TableReader:
    """One TOML table of a file: reads keys against Fields, with errors that name the file, table and key."""

    error_type: ClassVar[type[Exception]] = ValueError
    separator: ClassVar[str] = "."  # between the table and the key: "[board].name" (boards) or "[ocpp] url"

    def __init__(self, data: Any, where: str, path: Path):
        self.where = where  # e.g. "[board]" or "[[connectors]][0]"
        self.path = path
        if not isinstance(data, dict):
            raise self.error_type(f"{path}: {where}: expected a table, got {show(data)}")
        self.data: dict[str, Any] = data

    def error(self, key: str, message: str) -> Exception:
        return self.error_type(f"{self.path}: {self.where}{self.separator}{key}: {message}")

    def field(self, key: str, spec: Field) -> Any:
        """The value of `key` checked against `spec`, or the field's default when the key is absent."""
        if key not in self.data:
            if spec.default is REQUIRED:
                example = getattr(spec, "example", None)
                reason = f"required, e.g. {key} = {json.dumps(example)}" if example else "required key is missing"
                raise self.error(key, reason)
            return spec.default
        try:
            return spec.parse(self.data[key])
        except ValueError as reason:
            raise self.error(key, str(reason)) from None

    def read(self, schema: Schema, *, extra_keys: Collection[str] = ()) -> dict[str, Any]:
        """Every key of `schema` (absent OMITTED ones left out), after refusing keys neither it nor
        `extra_keys` names; then its checks."""
        self.reject_unknown({*schema.fields, *extra_keys})
        values = {key: self.field(key, spec) for key, spec in schema.fields.items()}
        values = {key: value for key, value in values.items() if value is not OMITTED}
        for check in schema.checks:
            check(self, values)
        return values

    def reject_unknown(self, allowed: Collection[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.error(key, "unknown key" + did_you_mean(key, allowed))

    # Shorthands for builders that read their keys one by one.
    def number(self, key: str, *, default: Any = REQUIRED, minimum: float | None = None,
               maximum: float | None = None, unit: str = "") -> Any:
        return self.field(key, Number(default=default, minimum=minimum, maximum=maximum, unit=unit))

    def integer(self, key: str, *, default: Any = REQUIRED, minimum: int | None = None,
                maximum: int | None = None, choices: tuple[int, ...] | None = None) -> Any:
        return self.field(key, Integer(default=default, minimum=minimum, maximum=maximum, choices=choices))

    def string(self, key: str, *, default: Any = REQUIRED, choices: tuple[str, ...] | None = None) -> Any:
        return self.field(key, String(default=default, choices=choices))

    def boolean(self, key: str, *, default: Any = REQUIRED) -> Any:
        return self.field(key, Boolean(default=default))

    def string_list(self, key: str, *, default: Any = REQUIRED) -> Any:
        return self.field(key, StringList(default=default))


def did_you_mean(key: str, known: Collection[str]) -> str:
    """' (did you mean "x"?)' for a close known key, else ' (known keys: ...)'."""
    import difflib  # only on this error path: the control process starts without it

    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    if close:
        return f' (did you mean "{close[0]}"?)'
    return f" (known keys: {', '.join(sorted(known))})" if known else ""

