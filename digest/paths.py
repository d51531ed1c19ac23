"""Where digest finds its bundled files: templates, config and migrations.

They live at the top of the repository, outside the Python packages. From a checkout they sit
next to the `digest/` package; from an installed wheel they are under `<prefix>/share/digest`.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


@cache
def resource_root() -> Path:
    """The directory holding `templates/`, `config/` and `migrations/`."""
    candidates = [_CHECKOUT_ROOT, Path(sys.prefix) / "share" / "digest"]
    for root in candidates:
        if (root / "templates").is_dir():
            return root
    raise FileNotFoundError(
        "cannot find digest's templates/ directory (looked in "
        + ", ".join(str(c) for c in candidates)
        + ")"
    )


def templates_dir() -> Path:
    return resource_root() / "templates"


def config_dir() -> Path:
    return resource_root() / "config"


def migrations_dir() -> Path:
    return resource_root() / "migrations"


def default_config_file() -> Path:
    return config_dir() / "digest.toml"
