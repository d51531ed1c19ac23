"""Reading a subscriber CSV: header aliases, unreadable records and per-cell checks.

Kept apart from the database work so every rule about what a line may contain, and every
message a bad line gets, is in one place; `csv_io` only sees rows that passed, and
`csv_export` writes the same columns so an export imports back unchanged.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from subscribers.addresses import InvalidAddress, normalize_email
from subscribers.profile import (
    InvalidField,
    clean_locale,
    clean_name,
    clean_timezone,
    from_spreadsheet,
)

COLUMNS = ("email", "name", "newsletters", "timezone", "locale")
_ALIASES = {
    "email": "email",
    "e_mail": "email",
    "email_address": "email",
    "mail": "email",
    "name": "name",
    "full_name": "name",
    "fullname": "name",
    "display_name": "name",
    "newsletters": "newsletters",
    "newsletter": "newsletters",
    "lists": "newsletters",
    "list": "newsletters",
    "timezone": "timezone",
    "time_zone": "timezone",
    "tz": "timezone",
    "locale": "locale",
    "language": "locale",
    "lang": "locale",
}
_LIST_SEPARATORS = re.compile(r"[;|,\s]+")


@dataclass(frozen=True)
class LineError:
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass(frozen=True)
class SkippedLine:
    line: int
    email: str
    newsletter: str | None
    reason: str

    def __str__(self) -> str:
        where = f" ({self.newsletter})" if self.newsletter else ""
        return f"line {self.line}: {self.email}{where}: skipped, {self.reason}"


@dataclass
class ImportReport:
    file_name: str
    rows: int = 0  # data lines read
    subscribers_created: int = 0
    subscriptions_created: int = 0
    already_subscribed: int = 0
    profiles_updated: int = 0
    skipped: list[SkippedLine] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def added(self) -> int:
        """New subscribers this import created."""
        return self.subscribers_created

    def summary(self) -> str:
        return (
            f"{self.file_name}: {self.rows} rows; {self.subscriptions_created} subscriptions "
            f"created ({self.subscribers_created} new subscribers), {self.already_subscribed} "
            f"already subscribed, {self.profiles_updated} profiles updated, {len(self.skipped)} "
            f"skipped, {len(self.errors)} bad lines"
        )


@dataclass
class Row:
    line: int
    email: str
    newsletters: list[str]
    profile: dict[str, str | None]


def read_header(reader: Any, report: ImportReport) -> dict[str, int] | None:
    try:
        header = next(reader, None)
    except csv.Error as exc:
        report.errors.append(LineError(1, "header", f"not valid CSV: {exc}"))
        return None
    if not header:
        report.errors.append(LineError(1, "header", "the file is empty (expected a header line)"))
        return None
    columns: dict[str, int] = {}
    for index, title in enumerate(header):
        key = re.sub(r"[\s-]+", "_", title.replace("\ufeff", "").strip().lower())
        target = _ALIASES.get(key)
        if target is None:
            report.ignored_columns.append(title.strip())
        elif target in columns:
            report.errors.append(LineError(1, "header", f"two columns mean {target!r}: {title!r}"))
            return None
        else:
            columns[target] = index
    if "email" not in columns:
        titles = ", ".join(repr(t) for t in header)
        report.errors.append(LineError(1, "email", f"no email column (header has {titles})"))
        return None
    return columns


def records(reader: Any, report: ImportReport) -> Iterator[tuple[int, list[str]]]:
    """(first line number, cells) for each record; unreadable records become errors."""
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            report.rows += 1
            report.errors.append(LineError(start, "row", f"not valid CSV: {exc}"))
            continue
        if cells and any(cell.strip() for cell in cells):
            yield start, cells


class RowChecker:
    """Turns one record into a Row, or records why it cannot be imported."""

    def __init__(
        self,
        columns: dict[str, int],
        default_newsletter: str | None,
        known: set[str] | None,
        report: ImportReport,
    ) -> None:
        self.columns = columns
        self.width = len(columns) + len(report.ignored_columns)
        self.default = default_newsletter
        self.known = known
        self.report = report
        self._lists: dict[str, list[str]] = {}
        self._locales: dict[str, str | None] = {}

    def __call__(self, line: int, cells: list[str]) -> Row | None:
        try:
            return self._check(line, cells)
        except InvalidField as exc:
            self.report.errors.append(LineError(line, exc.field, exc.reason))
            return None

    def _check(self, line: int, cells: list[str]) -> Row:
        if len(cells) > self.width:
            raise InvalidField("row", f"{len(cells)} fields but the header has {self.width}")
        values = dict.fromkeys(COLUMNS, "")
        for name, index in self.columns.items():
            if index < len(cells):
                cell = cells[index].strip()
                values[name] = from_spreadsheet(cell) if cell[:1] == "'" else cell
        try:
            email = normalize_email(values["email"])
        except InvalidAddress as exc:
            reason = "missing" if not values["email"] else f"{values['email']!r}: {exc}"
            raise InvalidField("email", reason) from exc
        profile = {
            "name": clean_name(values["name"]),
            "timezone": clean_timezone(values["timezone"]),
            "locale": self._locale(values["locale"]),
        }
        return Row(line, email, self._newsletters(values["newsletters"]), profile)

    def _locale(self, text: str) -> str | None:
        if text not in self._locales:
            self._locales[text] = clean_locale(text)
        return self._locales[text]

    def _newsletters(self, text: str) -> list[str]:
        """The row's newsletters (a file repeats a few combinations: each is checked once)."""
        if text not in self._lists:
            self._lists[text] = self._parse_newsletters(text)
        return self._lists[text]

    def _parse_newsletters(self, text: str) -> list[str]:
        slugs = list(dict.fromkeys(s for s in _LIST_SEPARATORS.split(text) if s))
        if not slugs and self.default:
            slugs = [self.default]
        if not slugs:
            raise InvalidField(
                "newsletters", "no newsletter (fill the newsletters column or pass one)"
            )
        unknown = [s for s in slugs if self.known is not None and s not in self.known]
        if unknown:
            known = ", ".join(sorted(self.known or ())) or "none configured"
            raise InvalidField("newsletters", f"unknown newsletter {unknown[0]!r} ({known})")
        return slugs
