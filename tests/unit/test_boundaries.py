"""The layout's rules, checked by import-linter with the contracts in pyproject.toml.

- `subscribers/` never imports `digest`;
- a stage imports only the stages below it (cli → web → ops → scheduling → sending →
  transports → mail → issues → rendering → ingest → storage; `app` and `config` at the top
  wire them);
- pure rules (rendering, period arithmetic, cron, tokens) touch no database, network or App;
- the scheduler's rules do not drag in the App;
- transports never touch the database (the ledger decides and records; they only deliver).

The second test breaks each rule in a copy of the tree and expects import-linter to notice, so
the contracts cannot silently stop checking anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_boundary_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(VIOLATIONS)} kept, 0 broken" in result.stdout, result.stdout


VIOLATIONS = {
    "subscribers never imports digest": ("subscribers/tokens.py", "import digest.config"),
    "stages import only stages below them": (
        "digest/storage/models.py",
        "import digest.sending.ledger",
    ),
    "pure rules touch no database, network or App": (
        "digest/rendering/render.py",
        "import sqlalchemy",
    ),
    "the scheduler's rules do not drag in the App": (
        "digest/scheduling/rules.py",
        "import digest.issues.assemble",
    ),
    "transports never touch the database": (
        "digest/transports/outbox.py",
        "import digest.storage.models",
    ),
}


@pytest.fixture(scope="module")
def broken_tree(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """A copy of the packages with one violation of each contract."""
    root = tmp_path_factory.mktemp("layout")
    for package in ("digest", "subscribers"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    for path, line in VIOLATIONS.values():
        target = root / path
        target.write_text(target.read_text(encoding="utf-8") + f"\n{line}  # noqa\n")
    return lint_imports(root)


@pytest.mark.parametrize("contract", list(VIOLATIONS))
def test_a_violation_of_each_contract_is_reported(
    broken_tree: subprocess.CompletedProcess[str], contract: str
) -> None:
    assert broken_tree.returncode == 1, broken_tree.stdout + broken_tree.stderr
    assert f"{contract} BROKEN" in broken_tree.stdout, broken_tree.stdout
