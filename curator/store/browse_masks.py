"""The app's reads of masks and layer-wise subsets: the masks stored, the selections with
per-layer subsets (GAST), each layer's subset size and their pairwise overlap.

A mask's density per layer comes from its file (``masks.mask_heatmap``), not from here:
the store reads no file outside the database.
"""

from __future__ import annotations

from typing import Any

from curator.store import Store


def list_masks(store: Store) -> list[dict[str, Any]]:
    return store.query_dicts(
        "SELECT k.selection_id, s.dataset, s.version, s.stage, s.method, k.density, "
        "k.n_kept, k.n_params, k.created_at FROM masks k LEFT JOIN selections s USING "
        "(selection_id) ORDER BY k.created_at")


def layered_selections(store: Store) -> list[str]:
    return [r[0] for r in store.query(
        "SELECT DISTINCT selection_id FROM selection_members WHERE layer <> '' ORDER BY 1")]


def layer_subset_sizes(store: Store, selection_id: str) -> list[dict[str, Any]]:
    """Per layer: how many samples train it (GAST layer-wise subsets)."""
    rows = store.query(
        "SELECT layer, count(*) FROM selection_members WHERE selection_id = ? AND layer <> '' "
        "GROUP BY layer", [selection_id])
    return sorted(({"layer": layer, "samples": int(n)} for layer, n in rows),
                  key=lambda r: _layer_order(r["layer"]))


def _layer_order(name: str) -> tuple:
    parts = name.replace(".", " ").split()
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def layer_overlap(store: Store, selection_id: str) -> list[dict[str, Any]]:
    """Pairwise Jaccard overlap of the per-layer subsets."""
    rows = store.query(
        "WITH m AS (SELECT layer, sample_id FROM selection_members WHERE selection_id = ? AND "
        "layer <> ''), n AS (SELECT layer, count(*) AS c FROM m GROUP BY layer) "
        "SELECT a.layer, b.layer, count(*) AS both_, na.c, nb.c FROM m a JOIN m b USING "
        "(sample_id) JOIN n na ON na.layer = a.layer JOIN n nb ON nb.layer = b.layer "
        "GROUP BY a.layer, b.layer, na.c, nb.c", [selection_id])
    return [{"layer_a": a, "layer_b": b, "jaccard": both / max(1, ca + cb - both)}
            for a, b, both, ca, cb in rows]
