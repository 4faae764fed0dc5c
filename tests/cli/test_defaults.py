"""Each default said once: every option that sets a config field (or a library argument)
has the default its owner declares, and a bad value gets the same message from the command
line, a recipe and the library."""

from __future__ import annotations

import dataclasses
import inspect
import json

import click
import pytest
from click.testing import CliRunner

from curator.budget import DEFAULT_PARAM_BUDGET, budget_fraction, parse_budget
from curator.cli import main
from curator.config import (
    GradientOptions,
    QualityOptions,
    RecipeError,
    ScoringOptions,
    StageSpec,
    default_of,
    recipe_from_dict,
)

SCORING = {name: (ScoringOptions, name) for name in (
    "k", "hubs", "distance", "batch_size", "max_length", "dtype",
    "engine", "workers", "threads", "ray_address")}
GRADIENT = {"warmup_steps": (GradientOptions, "warmup_steps"),
            "grad_eta": (GradientOptions, "eta"),
            "lambda_new": (GradientOptions, "lambda_new"),
            "lambda_prior": (GradientOptions, "lambda_prior"),
            "tau": (GradientOptions, "tau"),
            "mask_rank": (GradientOptions, "mask_rank"),
            "mask_spread": (GradientOptions, "mask_spread"),
            "grad_normalize": (GradientOptions, "normalize")}
QUALITY = {"quality_signal": (QualityOptions, "signal"),
           "quality_drop": (QualityOptions, "drop"),
           "quality_weight": (QualityOptions, "weight")}
STAGE = {name: (StageSpec, name) for name in (
    "version", "stage", "method", "budget", "function", "parent", "pool", "optimizer",
    "eta", "nu", "param_budget", "self_coverage", "harm", "seed")}
STAGE["target_set"] = (StageSpec, "target")
STAGE["expand"] = (ScoringOptions, "expand")


def _library() -> dict[str, dict[str, tuple]]:
    """Options whose default is a library function's or dataclass's (imported here, not
    by the CLI, which would pay for transformers on every command)."""
    from curator.ingestion.ingest import ingest
    from curator.outputs.subsets import LoadedExport, export_selection
    from curator.stages.gradient import mask_for_selection
    from curator.training.evaluate import exact_match
    from curator.training.finetune import eval_loss, train
    from curator.training.lora import LoraOptions

    return {
        "mask": {"param_budget": (mask_for_selection, "param_budget"),
                 "seed": (mask_for_selection, "seed")},
        "export": {"fmt": (export_selection, "fmt")},
        "ingest": {"split": (ingest, "split")},
        "train": {"epochs": (train, "epochs"), "steps": (train, "steps"), "lr": (train, "lr"),
                  "batch_size": (train, "batch_size"), "max_length": (train, "max_length"),
                  "seed": (train, "seed"), "lora_rank": (LoraOptions, "rank"),
                  "lora_alpha": (LoraOptions, "alpha"),
                  "lora_dropout": (LoraOptions, "dropout"),
                  "gast_sampling": (LoadedExport.layer_training, "sampling")},
        "eval": {"batch_size": (eval_loss, "batch_size"),
                 "max_length": (eval_loss, "max_length"),
                 "max_new_tokens": (exact_match, "max_new_tokens"),
                 "eval_tokens": (eval_loss, "tokens")},
    }


# Options whose default is the command line's own (where it listens, how much it lists):
# no library function or config takes them.
UI_ONLY = {"store_path", "host", "port", "limit", "offset", "poll"}


def _twins() -> list[tuple[tuple, tuple]]:
    """Library defaults that must agree with another library default (the one the CLI's
    table names): each pair reads one declaration, so a literal in either one fails here."""
    from curator.config import ExportSpec, StageSpec
    from curator.ingestion.ingest import ingest
    from curator.ingestion.readers import read_source
    from curator.outputs.subsets import export_selection
    from curator.stages.gradient import mask_for_selection
    from curator.training.evaluate import eval_loss, exact_match, generate_greedy, row_losses

    pairs = [((export_selection, "fmt"), (ExportSpec, "format")),
             ((ingest, "split"), (read_source, "split")),
             ((mask_for_selection, "seed"), (StageSpec, "seed")),
             ((exact_match, "batch_size"), (eval_loss, "batch_size"))]
    pairs += [((row_losses, name), (eval_loss, name))
              for name in ("batch_size", "max_length", "tokens")]
    pairs += [((generate_greedy, name), (exact_match, name))
              for name in ("batch_size", "max_new_tokens")]
    return pairs


# The scoring commands: every option but these sets a config field.
NOT_CONFIG = {"dataset", "store_path", "model", "trust_remote_code", "dense", "help"}
CONFIG = {"select": STAGE | GRADIENT | QUALITY | SCORING,
          "score utility": SCORING | {"version": (StageSpec, "version"),
                                      "target_set": (StageSpec, "target")},
          "score quality": SCORING | {"version": (StageSpec, "version")}}


def declared(owner, name: str):
    """The default ``owner`` (a dataclass or a function) declares, read independently of
    ``config.default_of``."""
    if dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}[name]
        assert field.default is not dataclasses.MISSING, (owner, name)
        return field.default
    default = inspect.signature(owner).parameters[name].default
    assert default is not inspect.Parameter.empty, (owner, name)
    return default


def walk(group: click.Group = main, prefix: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from walk(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_every_option_that_sets_a_config_field_has_its_default():
    commands = dict(walk())
    tables = CONFIG | _library()
    assert set(tables) <= set(commands)          # the tables name real commands
    checked = 0
    for path, table in tables.items():
        params = {p.name: p for p in commands[path].params if isinstance(p, click.Option)}
        assert set(table) <= set(params), (path, set(table) - set(params))
        if path in CONFIG:  # a new option on a scoring command must say which field it sets
            assert set(params) - NOT_CONFIG - set(table) == set(), path
        for name, (owner, field) in table.items():
            expected = declared(owner, field)
            assert params[name].default == expected, f"{path} --{name}: {owner} says {expected!r}"
            checked += 1
    assert checked >= 63


def test_no_option_writes_its_own_default():
    """Every option with a default takes it from a table above (its owner's), unless it is
    a UI-only setting: a new literal default on any command fails here."""
    tables = CONFIG | _library()
    for path, command in walk():
        for p in command.params:
            if not isinstance(p, click.Option) or p.is_flag or p.name in UI_ONLY:
                continue
            if isinstance(p.default, (int, float, str)):  # not None and not click's UNSET
                assert p.name in tables.get(path, {}), \
                    f"{path} --{p.name}: default {p.default!r} is said in the CLI only"


def test_library_defaults_that_repeat_each_other_agree():
    for (owner, name), (other, other_name) in _twins():
        assert declared(owner, name) == declared(other, other_name), (owner, name)


def option_help(command: list[str]) -> dict[str, str]:
    """``--help``'s text per option: flag -> its whole entry on one line."""
    out = CliRunner().invoke(main, [*command, "--help"]).output
    entries: dict[str, str] = {}
    flag = None
    for line in out.split("Options:")[1].splitlines():
        if line.startswith("  -"):
            flag = next(w for w in line.split() if w.startswith("--"))
            entries[flag] = ""
        if flag:
            entries[flag] += " " + line.strip()
    return entries


def test_help_shows_the_config_defaults():
    entries = option_help(["select"])
    for flag, (owner, field) in (("--budget", STAGE["budget"]), ("--k", SCORING["k"]),
                                 ("--harm", STAGE["harm"]), ("--engine", SCORING["engine"]),
                                 ("--warmup-steps", GRADIENT["warmup_steps"]),
                                 ("--quality-drop", QUALITY["quality_drop"])):
        assert entries[flag].endswith(f"[default: {declared(owner, field)}]"), entries[flag]
    assert option_help(["mask"])["--param-budget"].endswith(
        f"[default: {DEFAULT_PARAM_BUDGET}]")


def test_default_of():
    assert default_of(ScoringOptions, "k") == ScoringOptions().k
    assert default_of(StageSpec, "gradient") == GradientOptions()   # a default_factory
    with pytest.raises(KeyError, match="no field 'nope'"):
        default_of(StageSpec, "nope")


# -- one message for one mistake ------------------------------------------------------------


def fail(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="curator")
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    return result.stderr[len("error: "):-1]


def recipe_error(**stage) -> str:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"dataset": "d", "stages": [{"method": "random", **stage}]})
    return str(info.value)


@pytest.mark.parametrize("budget", ["150%", "0", "0%", "lots", "-5", "2.5", "1e3"])
def test_a_bad_budget_is_one_message_from_the_cli_a_recipe_and_the_library(tmp_path, budget):
    message = recipe_error(budget=budget).removeprefix("stages[0].budget: ")
    # checked before the store opens: this one does not exist
    assert fail("select", "-d", "d", "--store", tmp_path / "none", "--method", "random",
                "--budget", budget) == f"--budget: {message}"
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"dataset": "d", "stages": [{"budget": budget}]}))
    assert fail("curate", "--recipe", recipe, "--store", tmp_path / "s") == \
        f"stages[0].budget: {message}"
    with pytest.raises(ValueError) as info:
        parse_budget(budget, 10)
    assert str(info.value) == message


@pytest.mark.parametrize("budget", ["0", "200%", "2", "five"])
def test_a_bad_parameter_budget_is_one_message(tmp_path, budget):
    message = recipe_error(param_budget=budget).removeprefix("stages[0].param_budget: ")
    assert fail("select", "-d", "d", "--store", tmp_path / "none", "--method", "random",
                "--param-budget", budget) == f"--param-budget: {message}"
    # `curator mask` checks it before the store opens or the model loads
    assert fail("mask", "abc123", "--store", tmp_path / "none", "--param-budget", budget) == \
        f"--param-budget: {message}"
    with pytest.raises(ValueError) as info:
        budget_fraction(budget)
    assert str(info.value) == message


@pytest.mark.parametrize(("key", "value"), [("engine", "spark"), ("workers", 0), ("threads", 0)])
def test_engine_options_are_checked_once_by_the_config(tmp_path, key, value):
    from curator.scoring.engine import engine_for

    settings = {"engine": "ray", key: value}
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"dataset": "d", "stages": [{}], "scoring": settings})
    message = str(info.value).removeprefix(f"scoring.{key} ")
    cli = ["--engine", "ray", f"--{key}", value] if key != "engine" else ["--engine", value]
    assert fail("score", "utility", "-d", "d", "--store", tmp_path / "none", *cli) == \
        f"--{key} {message}"
    # the library's engine choice asks the same check
    with pytest.raises(RecipeError) as info:
        engine_for(ScoringOptions(**settings))
    assert str(info.value) == f"scoring.{key} {message}"
