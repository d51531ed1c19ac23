"""An installed wheel carries every template, config and migration file digest looks for."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_resource_file_is_listed_in_data_files() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    data_files: dict[str, list[str]] = config["tool"]["setuptools"]["data-files"]
    missing = []
    for top in ("templates", "config", "migrations"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts or path.name.startswith("."):
                continue
            relative = path.relative_to(ROOT).as_posix()
            target = f"share/digest/{Path(relative).parent.as_posix()}"
            patterns = data_files.get(target, [])
            if not any(
                fnmatch.fnmatch(relative, p) and "/" not in relative[len(p.rsplit("/", 1)[0]) + 1 :]
                for p in patterns
            ):
                missing.append(relative)
    assert missing == [], f"add these to [tool.setuptools.data-files] in pyproject.toml: {missing}"
