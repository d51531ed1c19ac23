"""Group commit for `digest.sending.stream`: the steps of every sending thread, one transaction.

Each thread sending row by row must have its message's outcome and the next row's hand-over
committed before that next message goes. Committed one by one, that is a transaction per
message, and the ledger becomes the bottleneck (half the sender's CPU at 2,000 messages/s).
Here the first thread to arrive writes what every waiting thread has queued, in one
transaction (one `executemany` per statement), while the others wait for it: a thread still
goes on only once its own step is durable, so the crash window stays one message per thread.
A failed transaction fails every step in it; their rows stay in flight, as after a crash.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from digest.sending import ledger


@dataclass
class Step:
    """One thread's writes for one message: its outcome, then the next row or the batch's end."""

    confirm: dict[str, Any]
    hand_over: dict[str, Any] | None = None
    finish: Callable[[Connection], None] | None = None
    done: bool = False
    error: BaseException | None = field(default=None, repr=False)


class GroupCommit:
    """Writes queued steps together; `record` returns once the caller's step is committed."""

    def __init__(self, engine: Engine, writing: Any, confirm: Any, hand_over: Any) -> None:
        self._engine = engine
        self._writing = writing  # SQLite's one-writer lock of the run (or a no-op)
        self._confirm, self._hand_over = confirm, hand_over
        self._turn = threading.Condition()
        self._queued: list[Step] = []
        self._writer_busy = False
        self._connection: Connection | None = None  # the writer's, kept: a checkout costs ~15%

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def record(self, step: Step) -> None:
        with self._turn:
            self._queued.append(step)
            while not step.done:
                if self._writer_busy:
                    self._turn.wait()
                    continue
                self._writer_busy, group, self._queued = True, self._queued, []
                self._turn.release()
                try:
                    self._write(group)
                finally:
                    self._turn.acquire()
                    self._writer_busy = False
                    for queued in group:
                        queued.done = True
                    self._turn.notify_all()
        if step.error is not None:
            raise step.error

    def _write(self, group: list[Step]) -> None:
        try:
            if self._connection is None:
                self._connection = self._engine.connect()
            db = self._connection
            with self._writing, db.begin():
                self._execute(db, self._confirm, [s.confirm for s in group], "answered")
                handed = [s.hand_over for s in group if s.hand_over is not None]
                if handed:
                    self._execute(db, self._hand_over, handed, "handed over")
                for step in group:
                    if step.finish is not None:
                        step.finish(db)
        except BaseException as exc:
            self.close()  # a fresh connection for the next group, whatever this one's state
            for step in group:
                step.error = exc

    @staticmethod
    def _execute(db: Connection, statement: Any, rows: list[dict[str, Any]], what: str) -> None:
        done = db.execute(statement, rows)
        if done.rowcount != len(rows):
            raise ledger.LostClaim(
                f"{len(rows) - done.rowcount} of {len(rows)} rows could not be {what}: "
                "their claim changed hands while in flight"
            )
