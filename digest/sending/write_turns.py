"""Turns at SQLite's one write lock among a run's threads: the senders first, the freeze after.

SQLite lets one connection write at a time and makes the others poll with growing sleeps, so a
run queues its own threads on a lock of its own and hands the turn over at once. Who goes first
matters while the audience is still being frozen: a freeze page holds the lock for its whole
INSERT … SELECT (~100 ms for 20,000 rows on the 2-core dev box), and a sender that finished a
batch waited up to a page to record it and again to claim the next: during a million-recipient
freeze (6 s) the senders managed 18-20 batches a second, against ~62 after it. Here the freeze
takes a turn only when no sender is waiting for one, so it fills the gaps between the senders'
short transactions: ~30 batches a second during the freeze, which takes ~7 s (bench_send.py's
1M send, about 0.3 s sooner in all). It cannot be starved for long: senders with no frozen
batch left stop asking and wait for its next page.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType


class WriteTurns:
    """`with turns:` for a sender's write transaction; `with turns.background():` for the
    freeze's, which waits while any sender waits."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._held = False
        self._waiting = 0  # senders queued for a turn

    def __enter__(self) -> None:
        with self._changed:
            self._waiting += 1
            try:
                while self._held:
                    self._changed.wait()
            finally:
                self._waiting -= 1
            self._held = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._changed:
            self._held = False
            self._changed.notify_all()

    @contextmanager
    def background(self) -> Iterator[None]:
        with self._changed:
            while self._held or self._waiting:
                self._changed.wait()
            self._held = True
        try:
            yield
        finally:
            self.__exit__(None, None, None)


class NoTurns:
    """PostgreSQL: writers lock only the rows they change, so nobody queues here."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    @contextmanager
    def background(self) -> Iterator[None]:
        yield
