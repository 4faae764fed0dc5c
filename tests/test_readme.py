"""The README's examples stay true: its recipe parses and validates."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from curator.config import recipe_from_dict

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_recipe_is_valid() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no yaml recipe"
    recipe = recipe_from_dict(yaml.safe_load(blocks[0]))
    assert [s.stage for s in recipe.stages] == ["instruction", "task", "continual"]
    assert recipe.stages[2].resolved_function == "flcg"
    assert recipe.stages[2].param_budget == "5%"
    assert recipe.inputs[1].path == "v2.jsonl" and recipe.inputs[1].append


def test_readme_quick_start_is_two_make_commands() -> None:
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^make \w+", quick, flags=re.M)
    assert commands == ["make demo", "make test"]
