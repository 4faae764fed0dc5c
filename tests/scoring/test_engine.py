"""Choosing a scoring engine: local by default, ray on request (an optional extra whose
absence is a one-line error), settings that never change what a stage selects."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from curator.cli import main
from curator.config import ENGINE_KEYS, RecipeError, ScoringOptions, StageSpec, recipe_from_dict
from curator.scoring import engine as engines
from curator.scoring.engine import LOCAL, EngineUnavailable, engine_for
from curator.stages.context import stage_key


@pytest.fixture
def no_ray(monkeypatch):
    """Ray not installed: importing it fails (a None entry in sys.modules does that)."""
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setattr(engines, "_SHARED", {})


def test_the_local_engine_is_the_default():
    assert ScoringOptions().engine == "local"
    assert engine_for(None) is LOCAL
    assert engine_for(ScoringOptions()) is LOCAL


def test_without_ray_the_ray_engine_is_an_error_naming_the_extra(no_ray):
    with pytest.raises(EngineUnavailable, match=r"pip install 'curator\[ray\]'"):
        engine_for(ScoringOptions(engine="ray"))


def test_cli_engine_ray_without_ray_is_one_line_and_exit_1(no_ray, tmp_path):
    result = CliRunner().invoke(main, ["score", "utility", "-d", "x", "--store",
                                       str(tmp_path / "store"), "--engine", "ray",
                                       "--workers", "2"])
    assert result.exit_code == 1
    assert result.output == ("error: --engine ray needs Ray, which is not installed: "
                             "pip install 'curator[ray]'\n")


@pytest.mark.parametrize(("settings", "message"), [
    ({"engine": "spark"}, "scoring.engine must be one of local, ray, got 'spark'"),
    ({"workers": 0}, "scoring.workers must be a positive integer, got 0"),
    ({"threads": True}, "scoring.threads must be a positive integer, got True"),
    ({"ray_address": 6379}, "scoring.ray_address must be a string"),
])
def test_engine_keys_are_validated_with_their_path(settings, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(")):
        ScoringOptions(**settings).validate()


def test_recipes_name_the_engine():
    recipe = recipe_from_dict({"dataset": "d", "inputs": ["a.jsonl"],
                               "stages": [{"name": "s", "budget": "10"}],
                               "scoring": {"engine": "ray", "workers": 4, "threads": 2,
                                           "ray_address": "head:6379"}})
    s = recipe.scoring
    assert (s.engine, s.workers, s.threads, s.ray_address) == ("ray", 4, 2, "head:6379")


def test_where_scoring_runs_is_not_part_of_a_stage_key():
    pools = SimpleNamespace(version=1, pool=[], target_ref=None, parent=None)
    spec = StageSpec(name="s", budget="10")
    local = stage_key("d", spec, pools, ScoringOptions(), "fp")
    ray = stage_key("d", spec, pools, ScoringOptions(engine="ray", workers=8, threads=2,
                                                     ray_address="head:6379"), "fp")
    assert ray == local
    assert stage_key("d", spec, pools, ScoringOptions(k=8), "fp") != local
    assert set(ENGINE_KEYS) <= set(vars(ScoringOptions()))


ENGINE_METHODS = ("pair_chunks", "embeddings", "quality", "gradient_sums", "sample_scores")


def _parameters(method) -> list[str]:
    import inspect

    return list(inspect.signature(method).parameters)


def test_the_engines_take_the_same_arguments():
    """Callers hold a ScoringEngine and never ask which one: the local and the Ray engine
    take every argument the protocol names (progress and gradient norms included)."""
    from curator.scoring.engine import LocalEngine, ScoringEngine

    want = {m: _parameters(getattr(ScoringEngine, m)) for m in ENGINE_METHODS}
    assert "progress" in want["sample_scores"] and "norms" in want["sample_scores"]
    assert {m: _parameters(getattr(LocalEngine, m)) for m in ENGINE_METHODS} == want
    pytest.importorskip("ray")
    from curator.scoring.ray_engine import RayEngine

    assert {m: _parameters(getattr(RayEngine, m)) for m in ENGINE_METHODS} == want
