"""Scheduler logs: human lines or JSON lines, carrying newsletter and issue ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from digest.ops.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    logger = logging.getLogger("digest")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_json_lines_carry_the_extra_fields() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    log = logging.getLogger("digest.schedule")
    log.info("sent %s", "x", extra={"newsletter": "turkey-unpacked", "issue_id": 42})
    log.debug("not shown at info")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"newsletter": "climate-weekly"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["message"] == "sent x" and first["level"] == "info"
    assert first["newsletter"] == "turkey-unpacked" and first["issue_id"] == 42
    assert first["logger"] == "digest.schedule" and first["ts"].endswith("+00:00")
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_human_lines_append_the_context_and_configuring_twice_does_not_duplicate() -> None:
    stream = io.StringIO()
    configure_logging("human", "debug", stream=io.StringIO())
    configure_logging("human", "debug", stream=stream)
    logging.getLogger("digest.leader").warning("leading", extra={"holder": "h:1:x"})
    [line] = stream.getvalue().splitlines()
    assert "WARNING" in line and "digest.leader: leading [holder=h:1:x]" in line
