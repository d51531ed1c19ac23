"""`digest worker`: one sending process of the pool (PostgreSQL), drained by SIGTERM."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Annotated

import typer

from digest.cli.common import console, enum_value, fail, get_signing_app

LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format", metavar="[human|json]", parser=enum_value("digest.config:LogFormat"),
        help="human or json lines (default: the logging.format key).",
    ),
]  # fmt: skip


def worker_command(
    ctx: typer.Context,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", min=1, help="Batches in flight (default: delivery.concurrency)."
        ),
    ] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Send the issues that are sending, with any number of other workers (PostgreSQL)."""
    from digest.config import LogFormat
    from digest.ops.logs import configure_logging
    from digest.sending.workers import Worker, WorkerRefused

    app = get_signing_app(ctx)
    chosen = LogFormat(log_format) if log_format else app.settings.logging.format
    configure_logging(chosen, app.settings.logging.level)
    worker = Worker(app, concurrency=concurrency)

    def drain(signum: int, _frame: FrameType | None) -> None:
        if worker.stop.is_set():
            raise SystemExit(128 + signum)  # a second signal: leave now
        console.print(f"{signal.Signals(signum).name}: draining (finishing the batches in flight)")
        worker.drain()

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, drain)
    try:
        worker.run()
    except WorkerRefused as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command("worker")(worker_command)
