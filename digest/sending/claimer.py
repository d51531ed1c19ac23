"""Who holds a batch claim, and whether that sender is still alive.

A batch found `sending` by a new run is only marked unknown when its sender is gone: on the same
machine that is a process check (pid and start time, so a reused pid does not count; a zombie is
dead), for a run of this very process whether it is still going, and for another host the age
of the claim's heartbeat (`send_batch.claimed_at`, refreshed while the sender works).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

_ACTIVE_RUNS: set[str] = set()  # runs of this process that are still sending
_ACTIVE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Claimer:
    """A sender's identity, stored in `send_batch.claimed_by`: `host/boot/pid/start/run`.

    On the same machine (same host name and boot id) a claimer is alive while its process is
    (the start time guards against a reused pid, and a zombie counts as dead); a run of this
    very process is alive until it ends. On another machine only the heartbeat tells: a claim
    not refreshed within the lease is stale.
    """

    host: str
    boot: str
    pid: int
    start: str
    run: str

    def __str__(self) -> str:
        return f"{self.host}/{self.boot}/{self.pid}/{self.start}/{self.run}"

    @classmethod
    def new(cls) -> Claimer:
        pid = os.getpid()
        return cls(_hostname(), _boot_id(), pid, _process_start(pid) or "?", uuid.uuid4().hex[:8])

    @classmethod
    def parse(cls, text: str | None) -> Claimer | None:
        parts = (text or "").split("/")
        if len(parts) != 5 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3], parts[4])

    def activate(self) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE_RUNS.add(self.run)

    def deactivate(self) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE_RUNS.discard(self.run)

    def judges_alive(
        self, other: Claimer | None, claimed_at: datetime | None, now: datetime, lease: timedelta
    ) -> bool:
        """Whether `other`, holding a claim stamped `claimed_at`, may still be sending it."""
        if other is not None and (other.host, other.boot) == (self.host, self.boot):
            if (other.pid, other.start) == (self.pid, self.start):
                with _ACTIVE_LOCK:
                    return other.run in _ACTIVE_RUNS
            return _process_alive(other.pid, other.start)
        return claimed_at is not None and now - claimed_at < lease


def _hostname() -> str:
    return socket.gethostname().replace("/", "_")[:60] or "localhost"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "noboot"


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def _process_start(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None  # field 22: starttime


def _process_alive(pid: int, start: str) -> bool:
    fields = _proc_stat(pid)
    if fields is None:
        if Path("/proc/self/stat").exists():
            return False  # /proc works here and has no such process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):  # zombie or dead: killed, not yet reaped
        return False
    return start == "?" or (len(fields) > 19 and fields[19] == start)
