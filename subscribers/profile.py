"""Checks for the optional profile fields (name, time zone, locale) before they are stored."""

from __future__ import annotations

import re
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_NAME = 200
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]{2,8})*$")
# Spreadsheet programs run cells starting with these as formulas: exports neutralise them with
# a leading apostrophe and imports take it off again.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class InvalidField(ValueError):
    """A profile value that cannot be stored; `field` names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def clean_name(raw: str | None) -> str | None:
    if raw is None:
        return None
    name = " ".join(raw.split())  # also removes CR/LF and tabs
    if len(name) > MAX_NAME:
        raise InvalidField("name", f"longer than {MAX_NAME} characters")
    return name or None


def clean_timezone(raw: str | None) -> str | None:
    value = (raw or "").strip()
    if not value:
        return None
    if not _known_timezone(value):
        raise InvalidField("timezone", f"unknown time zone {value!r} (use one like Europe/Paris)")
    return value


@lru_cache(maxsize=1024)
def _known_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def clean_locale(raw: str | None) -> str | None:
    value = (raw or "").strip()
    if not value:
        return None
    if len(value) > 35 or not _LOCALE.match(value):
        raise InvalidField("locale", f"not a locale like 'en', 'tr' or 'en_GB': {value!r}")
    return value


def spreadsheet_safe(value: str | None) -> str:
    """A cell value a spreadsheet will show as text, never run as a formula."""
    if not value:
        return ""
    return "'" + value if value.startswith(FORMULA_START) else value


def from_spreadsheet(value: str) -> str:
    """Undo `spreadsheet_safe`, so an export imports back unchanged."""
    if value.startswith("'") and value[1:2] and value[1] in FORMULA_START:
        return value[1:]
    return value
