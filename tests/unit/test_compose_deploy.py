"""The container files in config/deploy stay true to the code, like the systemd units: every
`digest …` command the compose file runs exists with those options, every DIGEST_* variable it
sets is one the README documents, and the roles the README promises are there. Docker is not
needed: the files are read as text (the compose file writes commands as JSON flow lists)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from digest.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "config" / "deploy"
COMPOSE = (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")
DOCKERFILE = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _services() -> dict[str, str]:
    """Each service's block of the compose file, by name."""
    body = COMPOSE[COMPOSE.index("\nservices:") : COMPOSE.index("\nvolumes:")]
    parts = re.split(r"^  ([a-z][a-z0-9-]*):\n", body, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _command(block: str) -> list[str] | None:
    found = re.search(r"^    command: (\[.*\])$", block, re.M)
    return json.loads(found.group(1)) if found else None


def _cli_options(path: list[str]) -> set[str]:
    command = typer.main.get_group(cli_app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return {opt for p in command.params for opt in getattr(p, "opts", [])}


def test_the_compose_file_has_every_role() -> None:
    services = _services()
    assert set(services) == {"db", "migrate", "serve", "scheduler", "worker"}
    assert "pg_isready" in services["db"] and "healthcheck" in services["db"]
    assert "replicas: 2" in services["worker"]
    assert "service_completed_successfully" in COMPOSE  # every role waits for the migration
    assert "condition: service_healthy" in services["migrate"]
    assert "context: ../.." in COMPOSE and "dockerfile: config/deploy/Dockerfile" in COMPOSE
    assert "env_file: [digest.env]" in COMPOSE


def test_every_digest_command_of_the_compose_file_exists_with_its_options() -> None:
    commands = {name: _command(block) for name, block in _services().items()}
    assert commands["migrate"] == ["db", "upgrade"]
    assert commands["worker"] is not None and commands["worker"][0] == "worker"
    for name, argv in commands.items():
        if argv is None or name == "db":
            continue
        words = [a for a in argv if not a.startswith("-")]
        path = words[:2] if argv[0] == "db" else words[:1]
        documented = f"`digest {' '.join(path)}"
        assert documented in README, f"{name}: {documented} is not in README's CLI reference"
        options = {a for a in argv if a.startswith("--")}
        assert options <= _cli_options(path), f"{name}: unknown options {options}"
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M)
    assert cmd is not None and json.loads(cmd.group(1))[0] == "serve"


def test_every_digest_variable_of_the_container_files_is_documented() -> None:
    import digest.config as config

    known = {value for key, value in vars(config).items() if key.startswith("ENV_")}
    used = set(re.findall(r"\bDIGEST_[A-Z_]+\b", COMPOSE + DOCKERFILE))
    assert {"DIGEST_CONFIG", "DIGEST_DATABASE_URL"} <= used
    assert used <= known, f"not variables the code reads: {used - known}"
    assert all(f"`{name}`" in README for name in used)


def test_the_image_runs_digest_as_a_non_root_user_and_checks_serve() -> None:
    assert DOCKERFILE.startswith("#") and "FROM python:3.11-slim" in DOCKERFILE
    assert re.search(r"^USER digest$", DOCKERFILE, re.M)
    assert 'ENTRYPOINT ["digest"]' in DOCKERFILE
    assert "pip install /src" in DOCKERFILE
    healthcheck = re.search(r"^HEALTHCHECK .*$", DOCKERFILE, re.M)
    assert healthcheck is not None and "/healthz" in healthcheck.group(0)
    assert "/healthz" in README  # where serve's health endpoint is documented
    services = _services()
    for name in ("scheduler", "worker"):  # no HTTP: the image's check would fail there
        assert "disable: true" in services[name]
    assert "disable: true" not in services["serve"]
