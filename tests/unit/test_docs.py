"""The README stays true: two commands first, every config key and CLI command documented."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import typer
from pydantic import BaseModel

from digest.cli import app as cli_app
from digest.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
FROM_ENVIRONMENT = {
    "secret_key",
    "old_secret_keys",
    "sendgrid_api_key",
    "api_token",
    "sendgrid_webhook_public_key",
    "dkim_private_key",
    "bounces_password",
    "source_file",
}


def config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if not prefix and name in FROM_ENVIRONMENT:
            continue
        annotation = field.annotation
        inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += config_keys(annotation, f"{prefix}{name}.")
        elif isinstance(inner, type) and issubclass(inner, BaseModel):
            keys += config_keys(inner, f"{prefix}{name}[].")
        else:
            keys.append(prefix + name)
    return keys


def cli_commands(group: typing.Any, prefix: str = "digest") -> list[str]:
    found = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):  # a command group (typer ships its own click)
            found += cli_commands(command, path)
        else:
            found.append(path)
    return found


def test_readme_starts_with_the_two_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block is not None
    lines = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert lines == ["make demo", "make test"]
    assert README.index("make demo") < README.index("## ")


def test_every_config_key_is_documented() -> None:
    keys = config_keys(Settings)
    assert "newsletters[].topic.tags" in keys  # the walker reaches nested tables
    missing = [key for key in keys if f"`{key}`" not in README]
    assert missing == [], f"document these keys in README.md: {missing}"


def test_every_cli_command_is_documented() -> None:
    commands = cli_commands(typer.main.get_group(cli_app))
    assert "digest db upgrade" in commands
    missing = [c for c in commands if f"`{c}" not in README]
    assert missing == [], f"document these commands in README.md: {missing}"


def test_every_environment_variable_is_documented() -> None:
    import digest.config as config

    names = [value for key, value in vars(config).items() if key.startswith("ENV_")]
    missing = [name for name in names if f"`{name}`" not in README]
    assert missing == [], f"document these variables in README.md: {missing}"


def test_the_architecture_table_names_every_package_and_module() -> None:
    section = README[README.index("## Architecture") : README.index("## Development")]
    root = Path(__file__).resolve().parents[2] / "digest"
    packages = sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())
    assert "sending" in packages
    missing = [p for p in packages if f"`digest/{p}/`" not in section]
    assert missing == [], f"add these packages to README.md's Architecture: {missing}"
    loose = sorted(
        p.name for p in root.glob("*.py") if p.name not in {"__init__.py", "__main__.py"}
    )
    assert [m for m in loose if f"`{m}`" not in section and f"`digest/{m}`" not in section] == []
    modules = {
        (package, module.stem)
        for package in packages
        for module in (root / package).glob("*.py")
        if module.stem != "__init__" and package not in {"cli", "web", "transports"}
    }
    unnamed = sorted(f"{p}/{m}" for p, m in modules if f"`{m}`" not in section)
    assert unnamed == [], f"say what these modules own in README.md's Architecture: {unnamed}"
