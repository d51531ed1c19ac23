"""Logging for long-running commands: human lines, or JSON lines for a log pipeline.

Records carry context through `extra`, e.g. `log.info("sent", extra={"newsletter": slug,
"issue_id": 42})`; the JSON format emits every such field, the human format appends them.
Nothing here reads secrets; callers must not pass any (URLs are logged without credentials).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from digest.config import LogFormat

# Attributes every LogRecord has: anything else on a record came from `extra`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_HANDLER_MARK = "_digest_handler"


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_") and value is not None
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the `extra` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in context_of(record).items():
            document.setdefault(key, value)
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, default=str)


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = context_of(record)
        if context:
            pairs = " ".join(f"{key}={value}" for key, value in context.items())
            first, newline, rest = line.partition("\n")
            line = f"{first} [{pairs}]{newline}{rest}"
        return line


def configure_logging(
    log_format: LogFormat | str = LogFormat.HUMAN,
    level: str = "info",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send `digest.*` and `apscheduler.*` records to `stream` (stderr) in the chosen format.

    Idempotent: configuring again replaces our handler, it never stacks a second one.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter() if LogFormat(log_format) == LogFormat.JSON else HumanFormatter()
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    for name in ("digest", "apscheduler"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
    logging.getLogger("digest").setLevel(level.upper())
    # APScheduler says "Running job ..." at INFO for every tick: keep it to warnings.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return handler


# -- tokens out of access logs ------------------------------------------------------------------

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "[redacted]"
# Paths whose next segment is a signed token or a one-time secret (digest.mail.links, sign-in).
_SECRET_PATH = re.compile(r"(/(?:u|preferences|confirm|login/link)/)[^/?#\s]+")
_SECRET_QUERY = re.compile(r"([?&](?:token|sig|signature|key|code|t)=)[^&#\s]*", re.IGNORECASE)


def redact(path: str) -> str:
    """`path` (a request path with its query) with tokens and one-time secrets replaced."""
    if "/" not in path and "=" not in path:
        return path
    return _SECRET_QUERY.sub(r"\1" + REDACTED, _SECRET_PATH.sub(r"\1" + REDACTED, path))


class RedactTokens(logging.Filter):
    """Rewrites the path of uvicorn's access records (`record.args[2]`) through `redact`.

    uvicorn logs `'%s - "%s %s HTTP/%s" %d'` with args (client, method, full path, version,
    status); every other record is checked as a whole message, in case one quotes a URL.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], redact(args[2]), args[3], args[4])
        elif isinstance(record.msg, str) and not args:
            record.msg = redact(record.msg)
        return True


def redact_access_log() -> None:
    """Install `RedactTokens` on uvicorn's access logger (idempotent; survives its dictConfig)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactTokens) for f in logger.filters):
        logger.addFilter(RedactTokens())
