"""Plain helpers and constants the tests share (importable: ``from tests.helpers import
...``); the fixtures built on them are in ``tests/conftest.py``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from curator.config import ScoringOptions

# Scoring options small enough for the tiny models: 3 neighbours, short sequences.
TINY_OPTIONS = ScoringOptions(k=3, batch_size=8, max_length=128)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any] | str]) -> str:
    """Write ``rows`` to ``path`` as JSON Lines, one row a line, each ending in a newline:
    a dict is dumped with ``json.dumps``'s defaults, a str written as it is (a bad row, say).
    Creates the parent folder; returns the path as a str (what ingest takes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n"
                            for row in rows), encoding="utf-8")
    return str(path)
