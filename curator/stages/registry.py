"""Method name -> ranker. A ranker takes a ``StageContext`` and returns a ``Ranked``; the
names are ``curator.vocabulary.METHODS`` (a test checks that every name has a ranker)."""

from __future__ import annotations

from collections.abc import Callable

from curator.stages.baselines import rank_embedding, rank_full, rank_random, rank_rds
from curator.stages.context import Ranked, StageContext
from curator.stages.delift import rank_delift
from curator.stages.gradient import rank_dualsft, rank_gast, rank_less

Ranker = Callable[[StageContext], Ranked]

RANKERS: dict[str, Ranker] = {
    "delift": rank_delift,
    "embedding": rank_embedding,
    "random": rank_random,
    "rds": rank_rds,
    "dualsft": rank_dualsft,
    "gast": rank_gast,
    "less": rank_less,
    "full": rank_full,
}


def ranker(method: str) -> Ranker:
    try:
        return RANKERS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}") from None
