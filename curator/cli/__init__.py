"""The `curator` command (``main``): the group and shared options in ``common``, commands in
``data`` (data sets and versions), ``commands`` (scoring, selection, export, training, demo,
app; the scoring commands' shared options in ``options``, the quality prior's in
``quality``) and ``schedule`` (schedules and the worker). Importing a module registers its
commands on ``main``."""

from curator.cli import commands, data, quality, schedule
from curator.cli.common import main

schedule.register(main)
quality.register(commands.score)

__all__ = ["commands", "data", "main"]
