"""Recipes: a bad recipe is refused before any work with a message naming the key path."""

from __future__ import annotations

import json

import pytest

from curator.config import (
    ExportSpec,
    GradientOptions,
    InputSpec,
    Recipe,
    RecipeError,
    ScoringOptions,
    StageSpec,
    check_budget,
    config_hash,
    load_recipe,
    recipe_from_dict,
)


def recipe(**overrides) -> dict:
    data = {"dataset": "d", "stages": [{"stage": "instruction", "budget": "30%"}]}
    data.update(overrides)
    return data


def refused(data, message: str) -> str:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data)
    assert message in str(info.value)
    return str(info.value)


def test_a_full_recipe_is_read_into_typed_configs():
    r = recipe_from_dict({
        "dataset": "d", "model": "some/model",
        "inputs": ["a.jsonl", {"path": "t.jsonl", "dataset": "t", "append": False}],
        "scoring": {"k": 4, "distance": "nll", "max_length": 256},
        "stages": [
            {"name": "first", "stage": "instruction", "method": "delift", "budget": 100},
            {"stage": "task", "target": "t", "budget": "10%", "eta": 0.5},
            {"stage": "continual", "parent": "previous", "pool": "all", "param_budget": "5%"},
        ],
        "export": {"format": "parquet", "out": "exp"},
    })
    assert r.model == "some/model"
    assert r.inputs == [InputSpec("a.jsonl"), InputSpec("t.jsonl", "t", False)]
    assert r.scoring == ScoringOptions(k=4, distance="nll", max_length=256)
    assert [s.stage for s in r.stages] == ["instruction", "task", "continual"]
    assert r.stages[0].budget == "100"                   # budgets are kept as text
    assert [s.resolved_function for s in r.stages] == ["facility_location", "flvmi", "flcg"]
    assert r.stages[2].param_budget == "5%" and r.stages[2].pool == "all"
    assert r.export == ExportSpec("parquet", "exp")
    # to_dict round trips through recipe_from_dict
    assert recipe_from_dict(r.to_dict()) == r


def test_defaults():
    r = recipe_from_dict({"dataset": "d", "stages": [{}]})
    assert r.stages == [StageSpec()] and r.export == ExportSpec() and r.inputs == []
    assert r.scoring == ScoringOptions() and r.scoring.hubs == "auto"
    assert recipe_from_dict(recipe(scoring={"hubs": 4})).scoring.hubs == 4
    assert recipe_from_dict(recipe(export=None)).export is None


@pytest.mark.parametrize(("data", "message"), [
    (recipe(stages=[{"stage": "instruction", "budgett": "30%"}]),
     "stages[0]: unknown key budgett (known: "),
    (recipe(extra=1, another=2), "recipe: unknown keys another, extra"),
    (recipe(scoring={"kk": 3}), "scoring: unknown key kk"),
    (recipe(export={"fmt": "jsonl"}), "export: unknown key fmt"),
    (recipe(inputs=[{"file": "x"}]), "inputs[0]: unknown key file"),
    (recipe(stages=[{}, {"budget": "30%", "colour": "red"}]), "stages[1]: unknown key colour"),
])
def test_unknown_keys_name_their_path(data, message):
    refused(data, message)


@pytest.mark.parametrize(("budget", "message"), [
    ("0", "stages[0].budget: budget must be above 0"),
    (0, "stages[0].budget: budget must be above 0"),
    ("150%", "stages[0].budget: budget above 100%"),
    ("thirty", "stages[0].budget: budget must be a count"),
    (True, "stages[0].budget: budget must be a count"),
    ("-5", "stages[0].budget: budget must be a count"),
    ("1.5", "stages[0].budget: budget 1.5 is neither a whole count nor a fraction"),
    (2.5, "stages[0].budget: budget 2.5 is neither a whole count nor a fraction"),
])
def test_bad_budgets(budget, message):
    refused(recipe(stages=[{"budget": budget}]), message)


def test_param_budgets():
    refused(recipe(stages=[{"param_budget": "0%"}]), "stages[0].param_budget: budget must be")
    refused(recipe(stages=[{"param_budget": "2"}]),
            "stages[0].param_budget: a parameter budget is a share of the parameters")
    refused(recipe(stages=[{"param_budget": "101%"}]), "stages[0].param_budget: budget above")
    r = recipe_from_dict(recipe(stages=[{"param_budget": "0.05"}, {"param_budget": "5%"},
                                        {"param_budget": 1}]))
    assert [s.param_budget for s in r.stages] == ["0.05", "5%", "1"]


@pytest.mark.parametrize(("stage", "message"), [
    ({"stage": "pretraining"}, "stages[0].stage must be one of instruction, task, continual, "
                               "got 'pretraining'"),
    ({"method": "magic"}, "stages[0].method must be one of"),
    ({"optimizer": "fast"}, "stages[0].optimizer must be one of naive, lazy, stochastic"),
    ({"pool": "old"}, "stages[0].pool must be 'new' or 'all', got 'old'"),
    ({"eta": -1}, "stages[0].eta must be a number >= 0, got -1"),
    ({"nu": "high"}, "stages[0].nu must be a number >= 0"),
    ({"function": "facility-locaton"}, "stages[0].function: unknown function "
                                       "'facility-locaton'"),
    ({"stage": "task"}, "stages[0]: the task stage needs a target set"),
    ({"stage": "task", "method": "rds"}, "stages[0]: the task stage needs a target set"),
])
def test_bad_stages(stage, message):
    refused(recipe(stages=[stage]), message)


def test_function_aliases_are_accepted_as_written():
    r = recipe_from_dict(recipe(stages=[{"function": "FL"}, {"function": "graph-cut"}]))
    assert [s.function for s in r.stages] == ["FL", "graph-cut"]


def test_task_with_a_method_that_needs_no_target_is_allowed():
    assert recipe_from_dict(recipe(stages=[{"stage": "task", "method": "dualsft"}]))


def test_duplicate_stage_names():
    refused(recipe(stages=[{"name": "a"}, {"name": "b"}, {"name": "a"}]),
            "stages[2].name: 'a' is used twice")


def test_previous_on_the_first_stage():
    refused(recipe(stages=[{"stage": "continual", "parent": "previous"}]),
            "stages[0].parent: 'previous' needs an earlier stage")
    assert recipe_from_dict(recipe(stages=[{}, {"stage": "continual", "parent": "previous"}]))


@pytest.mark.parametrize(("data", "message"), [
    ({"stages": [{}]}, "dataset: a dataset name is required"),
    ({"dataset": " ", "stages": [{}]}, "dataset: a dataset name is required"),
    ({"dataset": "d"}, "stages: give at least one stage"),
    ({"dataset": "d", "stages": {"a": 1}}, "stages: expected a list"),
    ({"dataset": "d", "stages": [{}], "inputs": "a.jsonl"}, "inputs: expected a list"),
    ({"dataset": "d", "stages": ["instruction"]}, "stages[0]: expected a mapping, got str"),
    (["dataset"], "a recipe must be a mapping"),
    (recipe(export={"format": "csv"}), "export.format must be one of"),
    (recipe(scoring={"k": 0}), "scoring.k must be a positive integer, got 0"),
    (recipe(scoring={"distance": "l1"}), "scoring.distance must be one of prob-l2, nll"),
    (recipe(scoring={"max_length": 8}), "scoring.max_length must be an integer >= 16"),
    (recipe(scoring={"dtype": "int8"}), "scoring.dtype must be auto"),
    (recipe(scoring={"hubs": "lots"}), "scoring.hubs must be 'auto' or an integer >= 0"),
    (recipe(scoring={"hubs": -2}), "scoring.hubs must be 'auto' or an integer >= 0"),
])
def test_other_refusals(data, message):
    refused(data, message)


def test_yaml_and_json_files(tmp_path):
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text("dataset: d\nstages:\n  - stage: instruction\n    budget: 30%\n"
                         "  - stage: continual\n    parent: previous\n")
    json_file = tmp_path / "r.json"
    json_file.write_text(json.dumps(recipe(stages=[{"budget": "30%"},
                                                   {"stage": "continual",
                                                    "parent": "previous"}])))
    assert load_recipe(yaml_file) == load_recipe(json_file)
    assert load_recipe(yaml_file).stages[1].parent == "previous"


def test_paths_in_a_recipe_file_are_relative_to_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    (folder / "local-model").mkdir(parents=True)
    f = folder / "r.yaml"
    f.write_text("dataset: d\nmodel: local-model\ninputs:\n  - v1.jsonl\n"
                 "  - {path: /abs/v2.jsonl}\nstages:\n  - {budget: 30%}\n"
                 "export: {out: out}\n")
    monkeypatch.chdir(tmp_path)  # another working directory: the file's folder still counts
    r = load_recipe("recipes/r.yaml")
    assert [i.path for i in r.inputs] == [str(folder / "v1.jsonl"), "/abs/v2.jsonl"]
    assert r.export.out == str(folder / "out") and r.model == str(folder / "local-model")
    f.write_text("dataset: d\nmodel: HuggingFaceTB/SmolLM2-135M\nstages:\n"
                 "  - {budget: 30%}\n")
    r = load_recipe(f)
    assert r.export.out == "exports"  # a default stays relative to the working directory
    assert r.model == "HuggingFaceTB/SmolLM2-135M"  # a name, not a folder: kept
    assert recipe_from_dict({"dataset": "d", "inputs": ["a.jsonl"],
                             "stages": [{"budget": "30%"}]}).inputs[0].path == "a.jsonl"


def test_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    bad_yaml = tmp_path / "bad.yml"
    bad_yaml.write_text("dataset: [unclosed\n")
    with pytest.raises(RecipeError, match="bad.yml is not valid yml"):
        load_recipe(bad_yaml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    with pytest.raises(RecipeError, match="bad.json is not valid json"):
        load_recipe(bad_json)
    wrong_key = tmp_path / "key.yaml"
    wrong_key.write_text("dataset: d\nstages:\n  - stagee: task\n")
    with pytest.raises(RecipeError, match=r"stages\[0\]: unknown key stagee"):
        load_recipe(wrong_key)


def test_check_budget_keeps_the_text():
    assert check_budget(" 30% ", "b") == "30%"
    assert check_budget("2.0", "b") == "2.0"          # a whole count written as a decimal
    assert check_budget("12.5%", "b") == "12.5%"
    assert check_budget(0.3, "b") == "0.3"
    assert check_budget(100, "b") == "100"
    assert check_budget("100%", "b") == "100%"


def test_config_hash_is_stable_and_order_free():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 16


def test_recipe_validate_is_chainable():
    r = Recipe("d", stages=[StageSpec(budget=10)])
    assert r.validate() is r and r.stages[0].budget == "10"


def test_recipe_errors_carry_their_key():
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(recipe(stages=[{"stage": "instruction"}, {"budget": "150%"}]))
    assert info.value.key == "stages[1].budget"
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(recipe(scoring={"k": 0}))
    assert info.value.key == "scoring.k"
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"stages": []})
    assert info.value.key == "dataset"


def test_gradient_settings_are_a_stage_mapping():
    r = recipe_from_dict(recipe(stages=[{"method": "dualsft", "gradient": {
        "warmup_steps": 20, "eta": 1e-4, "lambda_new": 1.0, "lambda_prior": 0.5, "tau": 1.0,
        "mask_rank": "abs", "mask_spread": 0.25}}, {"method": "dualsft"}]))
    assert r.stages[0].gradient == GradientOptions(20, 1e-4, 1.0, 0.5, 1.0, "abs", 0.25)
    assert r.stages[1].gradient == GradientOptions()  # warm-up, signed, no spread
    assert (GradientOptions().warmup_steps, GradientOptions().mask_rank,
            GradientOptions().mask_spread, GradientOptions().normalize) == (10, "signed", 0.0,
                                                                            "none")
    assert recipe_from_dict(r.to_dict()) == r


@pytest.mark.parametrize(("gradient", "message"), [
    ({"warmup": 3}, "stages[0].gradient: unknown key warmup (known: eta, lambda_new"),
    ({"warmup_steps": -1}, "stages[0].gradient.warmup_steps must be an integer >= 0"),
    ({"normalize": "l2"}, "stages[0].gradient.normalize must be one of none, unit"),
    ({"warmup_steps": 2.5}, "stages[0].gradient.warmup_steps must be an integer >= 0"),
    ({"eta": 0}, "stages[0].gradient.eta must be a finite number > 0"),
    ({"tau": float("inf")}, "stages[0].gradient.tau must be a finite number > 0"),
    ({"lambda_prior": float("nan")}, "stages[0].gradient.lambda_prior must be a finite number"),
    ({"mask_rank": "magnitude"}, "stages[0].gradient.mask_rank must be one of signed, abs"),
    ({"mask_spread": 1.5}, "stages[0].gradient.mask_spread must be a number in [0, 1]"),
    ("fast", "stages[0].gradient: expected a mapping"),
])
def test_bad_gradient_settings(gradient, message):
    refused(recipe(stages=[{"method": "dualsft", "gradient": gradient}]), message)


def test_gradient_settings_apply_to_dualsft_only():
    refused(recipe(stages=[{"method": "gast", "gradient": {"warmup_steps": 5}}]),
            "stages[0].gradient: these settings apply to method dualsft only (method is gast)")
    assert recipe_from_dict(recipe(stages=[{"method": "gast", "gradient": {}}]))
