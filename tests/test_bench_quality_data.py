"""The quality benchmark's data builder (bench/quality_data.py) on ../shared/data."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from quality_data import DATA_ROOT, DataConfig, build, gsm8k_final, t0_family  # noqa: E402

pytestmark = pytest.mark.skipif(not (DATA_ROOT / "t0").exists(),
                                reason="../shared/data is not present")


@pytest.fixture(scope="module")
def data():
    return build(DataConfig(pool_size=200, eval_size=30, target_size=10))


def test_sizes_and_shares(data):
    s = data.summary()
    assert s["pool"] == 200
    assert len(data.eval) == 30 and len(data.target) == 10
    assert s["existing"] + s["new"] == 200 and s["new"] > 0 and s["existing"] > 0
    assert s["duplicates"] == 8                                  # 4% of 200
    # 18% of the 192 non-duplicate rows are corrupted, the three kinds all present
    assert s["corrupted"] == round(0.18 * 192)
    assert set(s["corruptions"]) == {"shuffled", "truncated", "other_family"}
    assert sum(r.family == "sciq" and r.duplicate_of is None for r in data.pool) == 19
    assert "trec" not in s["families"]                           # empty completions
    for r in data.pool + data.target + data.eval:
        assert len(r.prompt) + len(r.response) <= 800
        assert "<|endoftext|>" not in r.prompt + r.response and r.response.strip()


def test_corruption_labels(data):
    for r in data.pool:
        if r.corruption is None:
            assert r.response == r.reference
        else:
            assert r.response != r.reference
            if r.corruption == "truncated":
                assert len(r.response) < len(r.reference)
    by_id = data.labels()
    assert len(by_id) == len(data.pool)                          # ids are unique
    for r in data.pool:
        if r.duplicate_of is not None:
            original = by_id[r.duplicate_of]
            assert original.corruption is None and r.response == original.response
            assert r.prompt != original.prompt
            assert " ".join(r.prompt.split()) == " ".join(original.prompt.split())
            assert r.split == original.split


def test_splits_and_no_target_leakage(data):
    assert {r.split for r in data.existing} == {"existing"}
    assert {r.split for r in data.new} == {"new"}
    old, new = {r.family for r in data.existing}, {r.family for r in data.new}
    assert old - new and new - old and old & new                 # partly overlapping
    pool_items = {r.item for r in data.pool}
    target_items = {r.item for r in data.target}
    eval_items = {r.item for r in data.eval}
    assert not pool_items & target_items and not pool_items & eval_items
    assert not target_items & eval_items
    assert {r.family for r in data.target + data.eval} == {"sciq"}
    pool_texts = {(r.prompt, r.reference) for r in data.pool}
    assert not any((r.prompt, r.response) in pool_texts for r in data.target + data.eval)


def test_written_rows_carry_no_labels(data, tmp_path):
    paths = data.write(tmp_path)
    rows = [json.loads(line) for line in paths["existing"].read_text().splitlines()]
    assert len(rows) == len(data.existing)
    assert all(set(r) == {"prompt", "response"} for r in rows)
    labels = json.loads(paths["labels"].read_text())["rows"]
    assert {r.sample_id for r in data.pool} <= set(labels)


def test_deterministic_and_gsm8k_target():
    a = build(DataConfig(pool_size=80, eval_size=10, target_size=5))
    b = build(DataConfig(pool_size=80, eval_size=10, target_size=5))
    assert [r.sample_id for r in a.pool] == [r.sample_id for r in b.pool]
    g = build(DataConfig(pool_size=80, eval_size=10, target_size=5, target_family="gsm8k"))
    assert {r.template for r in g.eval + g.target} == {"test"}
    assert {r.template for r in g.pool if r.family == "gsm8k"} == {"train"}
    assert all(gsm8k_final(r.reference) for r in g.eval)


def test_helpers():
    assert t0_family("sciq_Direct_Question_Closed_Book_") == "sciq"
    assert t0_family("kilt_tasks_hotpotqa_final_exam") == "kilt_tasks_hotpotqa"
    assert gsm8k_final("so 3 + 4 = 7\n#### 1,234") == "1234"


def test_second_task_and_eval_by_whole_items():
    cfg = DataConfig(pool_size=200, eval_size=60, target_size=10, eval_all_templates=True,
                     em_task="bbh:sports_understanding", em_eval_size=200, em_target_size=20)
    d = build(cfg)
    # sciq has two templates: whole items until at least 60 rows, items kept together
    items = {r.item for r in d.eval}
    assert len(d.eval) >= 60 and len(items) < len(d.eval)
    per_item = Counter(r.item for r in d.eval)
    assert max(per_item.values()) == 2
    # the exact-match task: 200 eval rows, 20 targets, ~10% of the pool, items disjoint
    assert len(d.em_eval) == 200 and len(d.em_target) == 20
    em_pool = [r for r in d.pool if r.family == "sports_understanding"]
    assert len([r for r in em_pool if r.duplicate_of is None]) == round(0.10 * 192)
    em_items = [{r.item for r in rows} for rows in (d.em_eval, d.em_target, em_pool)]
    assert not em_items[0] & em_items[1] and not em_items[0] & em_items[2]
    assert not em_items[1] & em_items[2]
    assert {r.family for r in d.em_eval + d.em_target} == {"sports_understanding"}
    assert {r.split for r in d.em_eval} == {"em_eval"}
    assert not items & {r.item for r in d.pool + d.target}


def test_short_sets_are_noted_not_fatal():
    # more eval rows than the family has items: a note, not a crash
    d = build(DataConfig(pool_size=60, eval_size=500, target_size=5))
    assert any(n.startswith("eval: only") for n in d.notes)


def test_em_task_names():
    from quality_data import em_family

    assert em_family("bbh:navigate") == "navigate" and em_family("gsm8k") == "gsm8k"
    with pytest.raises(ValueError, match="em_task"):
        em_family("navigate")
    with pytest.raises(ValueError, match="unknown BBH task"):
        build(DataConfig(pool_size=60, eval_size=5, target_size=5, em_task="bbh:nope"))
