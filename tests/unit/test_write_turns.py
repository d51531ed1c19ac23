"""Turns at SQLite's write lock within a run: senders before the freeze (`write_turns`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from digest.sending.write_turns import NoTurns, WriteTurns


def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _start(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_waiting_sender_goes_before_the_next_freeze_page() -> None:
    turns = WriteTurns()
    order: list[str] = []
    page_held = threading.Event()
    page_done = threading.Event()

    def first_page() -> None:
        with turns.background():
            page_held.set()
            page_done.wait(5)
            order.append("page 1")

    def sender() -> None:
        with turns:
            order.append("sender")

    def next_page() -> None:
        with turns.background():
            order.append("page 2")

    threads = [_start(first_page)]
    page_held.wait(5)
    threads.append(_start(sender))
    _until(lambda: turns._waiting == 1)  # the sender queued behind the page
    threads.append(_start(next_page))
    time.sleep(0.05)  # the next page asks too
    page_done.set()
    for thread in threads:
        thread.join(5)
    assert order == ["page 1", "sender", "page 2"]


def test_the_freeze_waits_for_a_sender_holding_the_lock() -> None:
    turns = WriteTurns()
    order: list[str] = []
    with turns:
        page = _start(lambda: _page(turns, order))
        time.sleep(0.05)
        order.append("sender")
    page.join(5)
    assert order == ["sender", "page"]


def _page(turns: WriteTurns, order: list[str]) -> None:
    with turns.background():
        order.append("page")


def test_one_writer_at_a_time_and_every_page_gets_its_turn() -> None:
    turns = WriteTurns()
    inside: list[int] = []
    overlaps: list[int] = []
    done = {"pages": 0, "senders": 0}

    def write(kind: str) -> None:
        inside.append(1)
        if len(inside) > 1:
            overlaps.append(len(inside))
        time.sleep(0.0005)
        done[kind] += 1
        inside.pop()

    def sender() -> None:
        for _ in range(100):
            with turns:
                write("senders")

    def freezer() -> None:
        for _ in range(20):
            with turns.background():
                write("pages")

    threads = [_start(sender) for _ in range(4)] + [_start(freezer)]
    for thread in threads:
        thread.join(30)
    assert overlaps == [] and done == {"pages": 20, "senders": 400}


def test_a_sender_that_fails_inside_its_turn_hands_it_on() -> None:
    turns = WriteTurns()
    try:
        with turns:
            raise RuntimeError("database gone")
    except RuntimeError:
        pass
    page = _start(lambda: _page(turns, []))
    page.join(5)
    assert not page.is_alive()


def test_postgresql_takes_no_turns() -> None:
    turns = NoTurns()
    with turns, turns.background(), turns:  # nested: nobody waits for anybody
        pass
