"""Why a sample was selected, on a store small enough to compute every number by hand."""

from __future__ import annotations

import pytest

from curator.app.explain import explain, selection_kernels
from curator.ingestion.ingest import ingest
from curator.store import Store
from curator.store.datasets import get_samples, version_sample_ids
from curator.store.scores import save_utilities
from curator.store.selection_rows import SelectionRecord, save_selection

MODEL, CONFIG = "m" * 16, "c" * 16


@pytest.fixture
def tiny(tmp_path, write_jsonl):
    """Pool a, b, c (dataset d) and targets q1, q2 (dataset t), with these utilities
    UF(target, example): pool x pool a<-b 0.4, c<-b 0.8, b<-a 0.2, b<-c 0.6, a<-c -0.1
    (harmful: no coverage); targets x pool q1<-b 0.5, q2<-b 1.0, q1<-a 0.25."""
    store = Store(tmp_path / "s")
    ingest(store, write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": p, "response": f"answer {p}"} for p in ("a", "b", "c")]), "d")
    ingest(store, write_jsonl(tmp_path / "t.jsonl", [
        {"prompt": p, "response": f"answer {p}"} for p in ("q1", "q2")]), "t")
    ids = {}
    for name in ("d", "t"):
        for s in get_samples(store, version_sample_ids(store, name, 1)).values():
            ids[s.prompt] = s.sample_id
    pairs = [("a", "b", 0.4), ("c", "b", 0.8), ("b", "a", 0.2), ("b", "c", 0.6),
             ("a", "c", -0.1), ("q1", "b", 0.5), ("q2", "b", 1.0), ("q1", "a", 0.25)]
    save_utilities(store, MODEL, CONFIG, [ids[t] for t, _, _ in pairs],
                   [ids[e] for _, e, _ in pairs], [u for _, _, u in pairs],
                   [1.0] * len(pairs), [1.0 - u for _, _, u in pairs], [True] * len(pairs))
    return store, ids


def _select(store, ids, function, picks, pool, gains, **extra):
    stage = {"flmi": "task", "flvmi": "task", "flcg": "continual"}.get(function, "instruction")
    record = SelectionRecord(
        dataset="d", version=1, stage=stage, method="delift", budget=str(len(picks)),
        n_pool=len(pool), n_selected=len(picks), function=function, model=MODEL,
        config={"utility_config": CONFIG, "eta": 0.5, "nu": 1.0, "self_coverage": "best"},
        target="t:1" if stage == "task" else None, **extra)
    return save_selection(store, record, [ids[p] for p in picks], gains=gains,
                          pool=[ids[p] for p in pool])


def _covers(why, ids):
    name = {v: k for k, v in ids.items()}
    return [(name[r["sample_id"]], r["dataset"], pytest.approx(r["coverage"]))
            for r in why["covers"]]


def test_flmi_caps_coverage_by_the_targets(tiny):
    store, ids = tiny
    sid = _select(store, ids, "flmi", ["b"], ["a", "b", "c"], [0.625])
    k = selection_kernels(store, sid)
    # one scale for both kernels: the largest utility of either (1.0); b covers itself with
    # its best helper (0.6); each pool row's cap is eta * its best target: a 0.125, b 0.5,
    # c 0 -> b: min(0.6, 0.5), a: min(0.4, 0.125), c: min(0.8, 0)
    why = explain(store, k, ids["b"], {"rank": 0, "gain": 0.625})
    assert _covers(why, ids) == [("b", "d", 0.5), ("a", "d", 0.125)]
    # greedy's first gain is the sum of what the first pick covers
    assert sum(r["coverage"] for r in why["covers"]) == pytest.approx(0.625)
    name = {v: k for k, v in ids.items()}
    assert [(name[r["sample_id"]], pytest.approx(r["similarity"])) for r in why["helped"]] \
        == [("c", 0.6), ("a", 0.2)]
    assert why["summary"] == "covers 2 pool samples, best 0.50; 1st pick, gain 0.625"


def test_flvmi_covers_targets_of_its_own_set(tiny):
    store, ids = tiny
    sid = _select(store, ids, "flvmi", ["b"], ["a", "b", "c"], [2.0])
    why = explain(store, selection_kernels(store, sid), ids["b"], {"rank": 0, "gain": 2.0})
    # the query kernel's own scale (1.0): q2 1.0, q1 0.5; gain = 1.5 + eta * 1.0
    assert _covers(why, ids) == [("q2", "t", 1.0), ("q1", "t", 0.5)]
    assert why["helped"] == []
    assert why["summary"] == "covers 2 targets, best 1.00; 1st pick, gain 2"
    # a sample outside the pool is said to be so
    other = explain(store, selection_kernels(store, sid), ids["q1"], None)
    assert other["summary"] == "not in this selection's pool" and other["covers"] == []


def test_flcg_counts_only_what_the_previous_data_leaves(tiny):
    store, ids = tiny
    parent = _select(store, ids, "facility_location", ["a"], ["a", "b", "c"], [0.5])
    sid = _select(store, ids, "flcg", ["c", "b"], ["b", "c"], [1.5, 0.0], parent=parent)
    k = selection_kernels(store, sid)
    # scale 0.8 (pool x pool c<-b; pool x previous b<-a is 0.2): S[c,b] 1, S[b,c] 0.75,
    # S[b,b] 0.75 and S[c,c] 1 (best helpers); the previous data (a) covers b with 0.25
    why_c = explain(store, k, ids["c"], {"rank": 0, "gain": 1.5})
    assert _covers(why_c, ids) == [("c", "d", 1.0), ("b", "d", 0.5)]
    assert [pytest.approx(r["covered before"]) for r in why_c["covers"]] == [0.0, 0.25]
    assert sum(r["coverage"] for r in why_c["covers"]) == pytest.approx(1.5)
    why_b = explain(store, k, ids["b"], {"rank": 1, "gain": 0.0})
    assert why_b["summary"].startswith(
        "covers 2 new samples, best 1.00 beyond what the previous data covers; 2nd pick, "
        "gain 0 (a zero-gain pick")


def test_methods_without_utilities_have_nothing_to_explain(tiny):
    store, ids = tiny
    record = SelectionRecord(dataset="d", version=1, stage="instruction", method="random",
                             budget="1", n_pool=3, n_selected=1)
    sid = save_selection(store, record, [ids["a"]])
    assert selection_kernels(store, sid) is None


def test_model_effect_sentence_in_model_terms():
    """The sentence a user can repeat, from d(i) and d(i | j): the drop as a share of d(i)
    on the rows it helps, the best one by name, nats for the nll distance."""
    from curator.app.explain import model_effect

    pairs = [{"target_id": "t1", "utility": 0.2, "d_target": 2.0, "d_given": 1.8},
             {"target_id": "t2", "utility": 0.05, "d_target": 1.0, "d_given": 0.95},
             {"target_id": "t3", "utility": -0.1, "d_target": 1.0, "d_given": 1.1},
             {"target_id": "elsewhere", "utility": 5.0, "d_target": 5.0, "d_given": 0.0}]
    effect = model_effect(pairs, ["t1", "t2", "t3"], "targets", {"t1": "Two plus two?"},
                          "nll")
    assert effect["sentence"] == (
        "Showing this example makes the model's loss on the answers of 2 targets drop by "
        "7.5% on average (best: 'Two plus two?', 10%); 0.125 nats per answer on average. "
        "It raises the loss on 1 target (it counts as 0 in the kernel).")
    assert [r["sample_id"] for r in effect["rows"]] == ["t1", "t2"]
    assert effect["n_scored"] == 3 and effect["n_hurt"] == 1
    none = model_effect(pairs[2:3], ["t3"], "pool samples", {}, "prob-l2")
    assert none["sentence"].startswith("Showing this example does not lower the model's "
                                       "error on any of the 1 pool sample it was scored with")
