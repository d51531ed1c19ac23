"""The deployment files in config/deploy stay true to the code: real commands and options,
every environment variable the code reads, nothing it does not."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
import typer

import digest.config as config
from digest.cli import app as cli_app

DEPLOY = Path(__file__).resolve().parents[2] / "config" / "deploy"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / name).read_text(encoding="utf-8"))
    return parser


@pytest.mark.parametrize(
    ("unit", "command"),
    [
        ("digest-scheduler.service", "scheduler"),
        ("digest-serve.service", "serve"),
        ("digest-run-due.service", "run-due"),
    ],
)
def test_units_start_real_commands_with_real_options(unit: str, command: str) -> None:
    service = _unit(unit)["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/bin/digest") and argv[1] == command
    group = typer.main.get_group(cli_app)
    click_command = group.commands[command]  # type: ignore[attr-defined]
    known = {opt for p in click_command.params for opt in getattr(p, "opts", [])}
    assert {a for a in argv[2:] if a.startswith("--")} <= known
    assert service["EnvironmentFile"] == "/etc/digest/digest.env"


def test_the_scheduler_unit_reloads_with_sighup_and_stops_with_sigterm() -> None:
    service = _unit("digest-scheduler.service")["Service"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) >= 60
    assert _unit("digest-run-due.timer")["Timer"]["Persistent"] == "true"


def test_the_environment_example_names_every_variable_the_code_reads() -> None:
    names = {value for key, value in vars(config).items() if key.startswith("ENV_")}
    lines = (DEPLOY / "digest.env.example").read_text(encoding="utf-8").splitlines()
    documented = {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}
    assert documented == names
