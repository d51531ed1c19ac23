"""Seeds for randomised tests, so that a failure can be replayed.

Every randomised test draws its seed here: from ``DIGEST_TEST_SEED`` if it is set, else a fresh
one. The seed is printed (pytest shows it under "Captured stdout" when the test fails) and its
``str()`` belongs in the assertion messages. To replay a failure::

    DIGEST_TEST_SEED=123456789 .venv/bin/python -m pytest -q tests/path/test_x.py::test_y
"""

from __future__ import annotations

import os
import random
import secrets
from dataclasses import dataclass

__all__ = ["SEED_ENV", "Seed", "draw_seed"]

SEED_ENV = "DIGEST_TEST_SEED"


@dataclass(frozen=True, slots=True)
class Seed:
    """One test's seed; ``str(seed)`` is the ``DIGEST_TEST_SEED=...`` that replays it."""

    value: int

    def rng(self) -> random.Random:
        """A fresh generator seeded with this seed (each call starts from the beginning)."""
        return random.Random(self.value)

    def __str__(self) -> str:
        return f"{SEED_ENV}={self.value}"


def draw_seed(label: str) -> Seed:
    """The seed for the randomised test ``label``: ``DIGEST_TEST_SEED`` if set, else fresh."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{SEED_ENV} must be an integer, not {raw!r}") from None
        source = "from the environment"
    else:
        value = secrets.randbits(32)
        source = "fresh"
    seed = Seed(value)
    print(f"{label}: {seed} ({source}; set it to replay)", flush=True)
    return seed
