"""Scheduling: `digest scheduler` (long-running) and `digest run-due` (one tick, for cron)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from digest.app import App, fixed_clock, system_clock
from digest.cli.common import LazyApp, console, enum_value, fail, get_signing_app, print_json

if TYPE_CHECKING:
    from digest.scheduling.tick import TickReport

LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format", metavar="[human|json]", parser=enum_value("digest.config:LogFormat"),
        help="human or json lines (default: the logging.format key).",
    ),
]  # fmt: skip


def _parse_now(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--now: not an ISO 8601 date-time: {text!r}")
    return moment


def _configure_logs(app: App, log_format: str | None) -> None:
    from digest.config import LogFormat
    from digest.ops.logs import configure_logging

    chosen = LogFormat(log_format) if log_format else app.settings.logging.format
    configure_logging(chosen, app.settings.logging.level)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT: stop between batches; a second one exits at once."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        console.print(f"{signal.Signals(signum).name}: stopping after the batch in flight")
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def run_due_command(
    ctx: typer.Context,
    now: Annotated[
        str | None,
        typer.Option(help="Run the tick as of this ISO 8601 moment (cron, simulations, tests)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    log_format: LogFormatOption = None,
) -> None:
    """One scheduler tick: ingest when due, fire due periods, resume sends; idempotent."""
    from digest.ops.retention import run_if_due
    from digest.scheduling.leader import leader_info, leading
    from digest.scheduling.pipeline import real_pipeline
    from digest.scheduling.tick import run_due

    app = get_signing_app(ctx)
    if now:
        app = App(settings=app.settings, clock=fixed_clock(_parse_now(now)), _engine=app.engine)
    _configure_logs(app, log_format)
    stop = threading.Event()
    with _stop_on_signals(stop), leading(app) as leadership:
        if leadership is None:
            with app.session() as session:
                info = leader_info(session, app.now())
            holder = info.holder if info else "another process"
            if as_json:
                print_json({"now": app.now().isoformat(), "standby": True, "leader": holder})
            else:
                console.print(f"Another scheduler leads ({holder}): nothing done.")
            return
        report = run_due(app, real_pipeline(), stop=stop)
        housekept = None if stop.is_set() else run_if_due(app)  # at most once a day
    if as_json:
        print_json({**report.as_dict(), "housekeeping": housekept and housekept.as_json()})
    else:
        _print_tick(report)
        if housekept is not None:
            console.print(f"Housekeeping: {housekept.summary()}", highlight=False, soft_wrap=True)
    if report.failed:
        raise typer.Exit(1)


def _print_tick(report: TickReport) -> None:
    """One line per fact: cron mails it and journald keeps it; a table would wrap."""
    out = [f"Tick at {report.now.isoformat()}; ingest: {report.ingest}"]
    for r in report.results:
        issue = f" issue {r.issue_id}" if r.issue_id else ""
        out.append(f"{r.newsletter} {r.period}: {r.action}, {r.outcome}{issue}: {r.detail}")
    if not report.results:
        out.append("Nothing due.")
    if report.busy:
        out.append(f"Busy in another job: {', '.join(report.busy)}")
    if report.stopped:
        out.append("Stopped before the end: the next run resumes.")
    for line in out:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def scheduler_command(ctx: typer.Context, log_format: LogFormatOption = None) -> None:
    """Run the scheduler: newsletters on their crontab, ingestion, catch-up; one leader."""
    from digest.ops.retention import run_if_due
    from digest.scheduling.service import SchedulerService

    root = ctx.find_root().obj
    app = get_signing_app(ctx)
    if isinstance(root, LazyApp):
        if root.clock is not system_clock:
            fail("--now cannot drive the long-running scheduler; use `digest run-due --now`")
        config_path = root.config_path

        def load_app() -> App:
            return App.from_config(config_path)
    else:

        def load_app() -> App:
            return app

    _configure_logs(app, log_format)
    service = SchedulerService(load_app, app=app, housekeeper=run_if_due)
    service.install_signal_handlers()
    raise typer.Exit(service.run())


def register(app: typer.Typer) -> None:
    app.command("scheduler")(scheduler_command)
    app.command("run-due")(run_due_command)
