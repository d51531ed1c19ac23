"""Worker processes that fetch *and* read sources in big runs, so the main process only stores.

Fetching costs CPU too (httpx, about as much per source as storing it), and shipping each body
to a parse process and back cost more: with both in the main process, it was the bottleneck
of a run. Each worker runs its own event loop and `Fetcher` with its share of
`ingest.concurrency` fetches at once, claims sources in configuration order from a shared
counter (so the first ones, which the main process stores first, are read first), parses and
prepares each, and sends back `(index, FetchResult without its body, ReadSource | None)` on a
pipe of its own. A worker that dies fails only the sources it had not sent back, named as such.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from multiprocessing.connection import Connection, wait
from typing import Any

from digest.config import IngestConfig, NewsletterConfig
from digest.ingest.fetch import Fetcher, FetchRequest, FetchResult, tls_context

# read(kind, result, now, newsletters): what a worker does with a fetched body (run.read_source)
Reader = Callable[[str, FetchResult, datetime, Sequence[NewsletterConfig]], Any]
Read = tuple[int, FetchResult, Any]
_DONE = object()


def start_method() -> str:
    """fork is fast but unsafe once threads exist (a server, a scheduler): forkserver there."""
    method = "fork" if threading.active_count() == 1 and hasattr(os, "fork") else "forkserver"
    return method if method in multiprocessing.get_all_start_methods() else "spawn"


class ReadingPool:
    """`count` processes reading `requests`; `take(i)` gives request i's read when it is in."""

    def __init__(
        self,
        count: int,
        requests: Sequence[FetchRequest],
        kinds: dict[str, str],
        config: IngestConfig,
        user_agent: str,
        now: datetime,
        newsletters: Sequence[NewsletterConfig],
        reader: Reader,
    ) -> None:
        self.requests = list(requests)
        method = start_method()
        context: Any = multiprocessing.get_context(method)
        if method == "fork":
            tls_context()  # built here once, inherited by every worker
        # Kept for the pool's life: collected, its semaphore goes before a fork server's or
        # spawned worker has opened it.
        self._claimed = claimed = context.Value("i", 0)
        self.processes: list[Any] = []
        self._pipes: list[Connection] = []
        for number in range(count):
            # `ingest.concurrency` shared out, so no more fetches run at once than it says
            slots = max(1, config.concurrency // count + (number < config.concurrency % count))
            share = config.model_copy(update={"concurrency": slots})
            receiving, sending = context.Pipe(duplex=False)
            args = (self.requests, kinds, share, user_agent, now, newsletters, reader)
            process = context.Process(
                target=_work, args=(*args, claimed, sending), daemon=True, name="digest-read"
            )
            process.start()
            sending.close()  # only the worker holds it: its exit is this end's EOF
            self.processes.append(process)
            self._pipes.append(receiving)
        self._reads: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: dict[int, Read] = {}
        self._done = False
        # Received (and unpickled) as they come, so a worker never waits on a full pipe while
        # this process stores.
        self._receiver = threading.Thread(target=self._receive, daemon=True, name="digest-recv")
        self._receiver.start()

    def _receive(self) -> None:
        pipes = list(self._pipes)
        while pipes:
            for pipe in wait(pipes):
                assert isinstance(pipe, Connection)
                try:
                    self._reads.put(pipe.recv())
                except (EOFError, OSError):  # the worker is done (or died mid-message)
                    pipes.remove(pipe)
                    pipe.close()
        self._reads.put(_DONE)

    def take(self, index: int) -> Read:
        """Request `index`'s read, waiting for it; a source no worker sent back failed."""
        while index not in self._waiting and not self._done:
            self._file(self._reads.get())
        if index in self._waiting:
            return self._waiting.pop(index)
        request = self.requests[index]
        return index, FetchResult(request.name, request.url, error=self._died()), None

    def ready(self, index: int) -> bool:
        """Whether `take(index)` would return at once (past the end: True)."""
        if index >= len(self.requests):
            return True
        while index not in self._waiting and not self._done:
            try:
                self._file(self._reads.get_nowait())
            except queue.Empty:
                return False
        return True

    def _file(self, read: Any) -> None:
        if read is _DONE:
            self._done = True
        else:
            self._waiting[read[0]] = read

    def _died(self) -> str:
        for process in self.processes:
            process.join(5)
        codes = sorted({p.exitcode for p in self.processes if p.exitcode})
        return f"not read: its worker process died (exit code {', '.join(map(str, codes))})"

    def close(self) -> None:
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        self._receiver.join(5)


def _work(
    requests: list[FetchRequest],
    kinds: dict[str, str],
    config: IngestConfig,
    user_agent: str,
    now: datetime,
    newsletters: Sequence[NewsletterConfig],
    reader: Reader,
    claimed: Any,
    pipe: Connection,
) -> None:
    try:
        asyncio.run(_fetch_and_read(requests, kinds, config, user_agent, now, newsletters,
                                    reader, claimed, pipe))  # fmt: skip
    finally:
        pipe.close()


async def _fetch_and_read(
    requests: list[FetchRequest],
    kinds: dict[str, str],
    config: IngestConfig,
    user_agent: str,
    now: datetime,
    newsletters: Sequence[NewsletterConfig],
    reader: Reader,
    claimed: Any,
    pipe: Connection,
) -> None:
    async with Fetcher(config, user_agent) as fetcher:

        async def slot() -> None:
            while True:
                with claimed.get_lock():
                    index = claimed.value
                    claimed.value += 1
                if index >= len(requests):
                    return
                result = await fetcher.fetch(requests[index])
                read = None
                if result.ok and not result.not_modified:
                    try:
                        read = reader(kinds[result.name], result, now, newsletters)
                    except Exception as exc:  # a reader bug: this source fails alone
                        result.error = f"could not parse: {type(exc).__name__}: {exc}"
                result.content = None  # the main process stores what was read, not the body
                pipe.send((index, result, read))

        await asyncio.gather(*(slot() for _ in range(config.concurrency)))
