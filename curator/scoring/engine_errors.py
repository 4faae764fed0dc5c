"""The error both engines raise, in a module of its own so that the Ray engine (imported
lazily by ``curator.scoring.engine``) does not import the module that imports it."""

from __future__ import annotations


class EngineUnavailable(ValueError):
    """The engine asked for cannot run here (a missing optional dependency, no cluster)."""
