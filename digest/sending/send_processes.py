"""Signing, building and sending batches in helper processes, so that a large send uses every core.

A sending process has one interpreter lock. Of a SendGrid send's CPU, about half is spent per
recipient on signing links (two or more HMACs), writing the request body and the HTTP request,
while the ledger's part (claiming, reading a batch, recording results) and the freeze are the
rest. With `delivery.send_processes` helpers (fresh `python -c` processes, never forked from a
threaded one), the sending threads keep the ledger's part and hand a batch's recipients to a
helper as plain tuples; the helper fills in their token values, calls its own transport and
answers one (outcome, message id, error) per recipient. The sending thread waits without the
lock. The pipe carries pickles between a sender and the children it started, nothing else.

Exactly-once is the ledger's, as with an in-process transport: a batch is in flight before it
is handed over, and one whose helper dies or whose sender dies stays in flight (unknown to the
next run); one that never reached its helper goes back to pending (`NotHandedOver`), as does
the first batch of a helper that could not start (its transport refused: the send stops with
the reason). A helper whose sender is gone drops the batches it has not started. A 429 a helper
gets is told to its sender, which holds the batches not yet handed over and tells the fleet.

Each helper keeps the last VARIANTS_KEPT messages (a topic issue has one, a personal issue one
per variant) and is sent a message only when it does not hold it: both sides apply the same
least-recently-used rule in the order the requests travel, so they agree on what it holds.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from digest.config import Settings
from digest.mail.message import RecipientValues
from digest.transports import (
    OutgoingBatch,
    OutgoingMessage,
    OutgoingRecipient,
    RetryPolicy,
    SendOutcome,
    SendResult,
    build_transport,
)

# Messages a helper holds. Fewer than the sender's 64 (digest.sending.run): batches are claimed
# variant after variant, so a helper needs only the few in flight; a miss costs one message on
# the pipe and its JSON prefix rebuilt (about a millisecond), a kept one its bodies four times
# (message, request dict, twin-token HTML, JSON), ~1 MB for a large variant.
VARIANTS_KEPT = 8
# "auto": helpers from this many recipients. Starting two costs ~0.3 s; on the 2-core dev box,
# sharing its cores with the local SendGrid server, they lost at 100,000 (2.2 → 2.4 s) and won
# at 1M (21.7 → 20.8 s; bench_send.py --send-processes 0,auto).
AUDIENCE = 250_000

PAUSE = -1  # the request id of a helper's "the provider asked me to wait N s" (a 429)
_OUTCOMES = {str(o): o for o in SendOutcome}
# (delivery id, subscriber id, email, name, Message-ID): a recipient as it travels.
Row = tuple[int | None, int, str, str | None, str | None]


class HelperDied(Exception):
    """A helper process ended with batches in flight: they may have gone out (unknown)."""


class NotHandedOver(HelperDied):
    """The helper was gone before the batch reached it: nothing went out (back to pending)."""


READY_SECONDS = 60.0  # a helper's start-up (imports, its transport) before the send gives up


def helpers_for(
    settings: Settings, audience: int, cpus: int | None, *, personal: bool = False
) -> int:
    """How many helpers a send of `audience` recipients gets (`delivery.send_processes`).

    "auto" gives none to a personal issue: its sender and variant renderer already take about
    260 MB for a million readers, and two helpers (~60 MB each) would take it past the 300 MB
    such a send is held to; configured, they make it about a fifth faster (bench_personal.py).
    """
    configured = settings.delivery.send_processes
    if configured != "auto":
        return int(configured)
    return 2 if audience >= AUDIENCE and (cpus or 1) >= 2 and not personal else 0


class SendProcesses:
    """`send()` one batch through the least busy helper; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        processes: int,
        threads: int,
        on_pause: Callable[[float], None] | None = None,
    ) -> None:
        # Started now, waited for at their first batch: their start-up (~0.25 s of imports)
        # overlaps the freeze's first page.
        self._helpers = [_Helper(settings, threads, n, self._pause) for n in range(processes)]
        self._choose = threading.Lock()
        # A 429 one helper got holds back every batch not yet handed over (as one transport's
        # pause holds its threads), and is told on (`on_pause`: the fleet's, on PostgreSQL).
        self._on_pause = on_pause
        self._paused_until = 0.0

    def _pause(self, seconds: float) -> None:
        with self._choose:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        if self._on_pause is not None:
            self._on_pause(seconds)

    def send(
        self,
        key: Hashable,
        message: OutgoingMessage,
        values: RecipientValues,
        batch_id: int | None,
        rows: Sequence[Row],
    ) -> list[SendResult]:
        """The transport's results for `rows`, sent with `message` (`key` names it)."""
        wait = self._paused_until - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        with self._choose:
            helper = min(self._helpers, key=lambda h: h.busy)
            helper.busy += 1
        try:
            replies = helper.call(key, message, values, batch_id, rows)
        finally:
            with self._choose:
                helper.busy -= 1
        if isinstance(replies, tuple):  # one answer for all (SendGrid: one request)
            outcome, message_id, error = replies
            kind = _OUTCOMES[outcome]
            return [SendResult(row[2], kind, message_id, error) for row in rows]
        if len(replies) != len(rows):
            raise RuntimeError(f"a helper answered {len(replies)} results for {len(rows)}")
        return [
            SendResult(row[2], _OUTCOMES[outcome], message_id, error)
            for row, (outcome, message_id, error) in zip(rows, replies, strict=True)
        ]

    def close(self) -> None:
        for helper in self._helpers:
            helper.close()


class _Reply:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None


class _Helper:
    """One helper process: requests go down its pipe, a reader thread hands the replies back.

    Started as `python -c` rather than by multiprocessing's spawn, which would first re-import
    the sender's main module (the whole CLI: about a second of CPU per helper)."""

    def __init__(
        self, settings: Settings, threads: int, number: int, on_pause: Callable[[float], None]
    ) -> None:
        self._on_pause = on_pause
        self._conn, child = Pipe()
        self.name = f"digest-send-helper-{number}"
        root = str(Path(__file__).resolve().parents[2])  # where `digest` is importable from
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        code = "import sys; from digest.sending.send_processes import main; main(int(sys.argv[1]))"
        self._process = subprocess.Popen(
            [sys.executable, "-c", code, str(child.fileno())],
            pass_fds=(child.fileno(),),
            env={**os.environ, "PYTHONPATH": path},
        )
        child.close()
        self.busy = 0
        self._started = False
        self._starting = threading.Lock()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._waiting: dict[int, _Reply] = {}
        self._held: OrderedDict[Hashable, None] = OrderedDict()
        self._dead: str | None = None
        try:
            self._conn.send((settings, threads, _log_setup()))
        except OSError:  # it is gone already (told at its first batch)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
            self._dead = f"{self.name} ended while starting (exit code {self._process.poll()})"
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-reader", daemon=True)

    def wait_ready(self) -> None:
        """Until the helper has its transport. One that cannot start is marked dead, with
        why: `call` then raises NotHandedOver (its batch back to pending)."""
        with self._starting:
            if self._started or self._dead is not None:
                return
            problem = f"{self.name} did not start within {READY_SECONDS:.0f} s"
            try:
                if self._conn.poll(READY_SECONDS):
                    _, error = self._conn.recv()
                    problem = "" if error is None else f"{self.name} could not start: {error}"
            except (EOFError, OSError):
                problem = f"{self.name} ended while starting (exit code {self._process.poll()})"
            if problem:
                self._dead = problem
                return
            self._started = True
            self._reader.start()

    def call(
        self,
        key: Hashable,
        message: OutgoingMessage,
        values: RecipientValues,
        batch_id: int | None,
        rows: Sequence[Row],
    ) -> Any:  # a reply per row, or one tuple for all
        self.wait_ready()
        reply = _Reply()
        with self._lock:
            if self._dead is not None:
                raise NotHandedOver(self._dead)
            request_id = next(self._ids)
            self._waiting[request_id] = reply
            carried = None if _touch(self._held, key) else (message, values)
            try:
                self._conn.send((request_id, key, carried, batch_id, list(rows)))
            except OSError as exc:  # a broken pipe: the helper is gone, the request with it
                self._waiting.pop(request_id, None)
                self._dead = f"{self.name} is gone ({exc})"
                raise NotHandedOver(self._dead) from exc
        reply.done.wait()
        if isinstance(reply.value, BaseException):
            raise reply.value
        return reply.value  # type: ignore[no-any-return]

    def _read(self) -> None:
        try:
            while True:
                request_id, value = self._conn.recv()
                if request_id == PAUSE:
                    self._on_pause(value)
                    continue
                with self._lock:
                    reply = self._waiting.pop(request_id)
                reply.value = value
                reply.done.set()
        except (EOFError, OSError):
            pass
        with self._lock:
            self._dead = f"{self.name} ended (exit code {self._process.poll()})"
            waiting, self._waiting = self._waiting, {}
        for reply in waiting.values():
            reply.value = HelperDied(self._dead + " with this batch in flight")
            reply.done.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        self._conn.close()
        if self._started:
            self._reader.join(timeout=5)


def _touch(held: OrderedDict[Hashable, Any], key: Hashable, value: Any = None) -> bool:
    """Mark `key` most recently used; False if it was not held (then it is, evicting the
    oldest beyond VARIANTS_KEPT). The one rule both sides apply."""
    if key in held:
        held.move_to_end(key)
        return True
    held[key] = value
    while len(held) > VARIANTS_KEPT:
        held.popitem(last=False)
    return False


def _log_setup() -> tuple[int, list[logging.Formatter]]:
    """The sender's `digest` logging (level, its handlers' formatters: `digest.ops.logs`), so
    that a helper's records (a retry, a 429) come out on stderr as the sender's do."""
    logger = logging.getLogger("digest")
    handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    return logger.level, [h.formatter for h in handlers if h.formatter is not None]


def _apply_log_setup(level: int, formatters: list[logging.Formatter]) -> None:
    logger = logging.getLogger("digest")
    logger.setLevel(level)
    for formatter in formatters:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        logger.addHandler(handler)


def main(fd: int) -> None:
    """A helper process's entry point: its pipe's end is file descriptor `fd`."""
    conn = Connection(fd)
    try:
        settings, threads, (level, formatters) = conn.recv()
    except (EOFError, OSError):
        return
    _apply_log_setup(level, formatters)
    serve(conn, settings, threads)


def serve(conn: Connection, settings: Settings, threads: int) -> None:
    """A helper's main loop: take requests in order, send each on one of `threads` threads."""
    answering = threading.Lock()

    def answer(request_id: int, value: Any) -> None:
        with answering, contextlib.suppress(OSError):
            conn.send((request_id, value))

    policy = RetryPolicy(
        max_attempts=settings.delivery.max_retries + 1,
        on_pause=lambda seconds: answer(PAUSE, seconds),  # the sender holds its other batches
    )
    try:
        transport = build_transport(settings, policy=policy)
    except Exception as exc:  # told to the sender, which stops at its first batch
        conn.send(("ready", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    if hasattr(transport, "shared_kept"):  # its per-message cache: no more than this side's
        transport.shared_kept = VARIANTS_KEPT
    held: OrderedDict[Hashable, tuple[OutgoingMessage, RecipientValues]] = OrderedDict()

    def run(request_id: int, message: OutgoingMessage, values: RecipientValues,
            batch_id: int | None, rows: list[Row]) -> None:  # fmt: skip
        try:
            recipients = [
                OutgoingRecipient(d, s, email, name, values(s, name), m)
                for d, s, email, name, m in rows
            ]
            results = transport.send(OutgoingBatch(message, recipients, batch_id))
            value: Any = [(str(r.outcome), r.message_id, r.error) for r in results]
            if value and value.count(value[0]) == len(value):
                value = value[0]  # the same for everyone: one tuple travels
        except BaseException as exc:  # raised in the sending thread, as the transport's own
            value = RuntimeError(f"{type(exc).__name__}: {exc}")
        answer(request_id, value)

    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="digest-helper")
    try:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):  # the sender is gone: start nothing more
                break
            if request is None:
                break
            request_id, key, carried, batch_id, rows = request
            if carried is not None:
                held.pop(key, None)
            _touch(held, key, carried)
            message, values = held[key]
            pool.submit(run, request_id, message, values, batch_id, rows)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        transport.close()
