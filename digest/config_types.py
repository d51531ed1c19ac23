"""The annotated field types settings are built from: time zones, durations, header text.

Apart from `config` so its sections read as the configuration reference, not as validator
code; `config` re-exports `parse_duration`, which is where callers import it from.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


TimeZoneName = Annotated[str, AfterValidator(_timezone)]

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """'7d', '36h', '90m', '2w' → timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration like '7d', '36h' or '90m': {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _duration(value: str) -> str:
    parse_duration(value)
    return value


Duration = Annotated[str, AfterValidator(_duration)]


def _no_newlines(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain line breaks")
    return value


HeaderText = Annotated[str, AfterValidator(_no_newlines)]


class Strict(BaseModel):
    """A config section: unknown keys are refused (a typo is an error, not a silent default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
