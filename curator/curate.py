"""Old home of the stage layer, kept for ``bench/quality.py``, which imports from here; the
code lives in ``curator.stages``. New code imports from there."""

from curator.stages import resolve_pools, select_stage

__all__ = ["resolve_pools", "select_stage"]
