"""The `curator` command (``main``): the group and shared options in ``common``, commands in
``data`` (data sets and versions), ``commands`` (scoring, selection, export, training, demo,
app) and ``schedule`` (schedules and the worker). Importing a module registers its
commands on ``main``."""

from curator.cli import commands, data, quality, schedule
from curator.cli.common import main

schedule.register(main)
quality.register(commands.score, commands.scoring_options, commands.engine_options,
                 commands._loader, commands._options)

__all__ = ["commands", "data", "main"]
