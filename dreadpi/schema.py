"""Typed settings for INI sections: each key parses its text or says precisely what is wrong with it.

Collectors declare their own sections with these fields, so `check-config` validates every section the same
way and a typo is caught before the first cycle, not at 3 a.m. by cron.
"""

from __future__ import annotations

import math
import re
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a Pi Zero real time at start-up; annotations are strings anyway
    from typing import Any, Callable

REQUIRED = object()  # sentinel default: the key must be given


class Field(namedtuple("Field", ("parse", "default", "doc"), defaults=(REQUIRED, ""))):
    """One INI key: how to parse it, its default, and the sentence documenting it. A secret key's parser
    (text(secret=True)) keeps its value out of error messages."""

    __slots__ = ()
    parse: Callable[[str], Any]
    default: Any
    doc: str


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""), 10)
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
        _check_range(value, minimum, maximum)
        return value

    return parse


def number(minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
        _check_range(value, minimum, maximum)
        return value

    return parse


def _check_range(value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise ValueError(f"must be at least {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"must be at most {maximum:g}, got {value:g}")


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {value!r}")
        return value

    return parse


_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected yes or no, got {text!r}")


def text(pattern: str = r".+", description: str = "a value", secret: bool = False) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def parse(raw: str) -> str:
        value = raw.strip()
        if not compiled.fullmatch(value):
            shown = "the value given" if secret else repr(value)
            raise ValueError(f"expected {description}, got {shown}")
        return value

    return parse


def absolute_path(raw: str) -> str:
    value = raw.strip()
    if not value.startswith("/") or "\0" in value or "/../" in value + "/":
        raise ValueError(f"expected an absolute path, got {value!r}")
    return value.rstrip("/") or "/"


_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def account_name(raw: str) -> str:
    value = raw.strip()
    if not _NAME.fullmatch(value):
        raise ValueError(f"expected a user or group name, got {value!r}")
    return value
