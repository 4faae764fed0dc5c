"""The `curator` command (``main``)."""

from curator.cli.commands import main

__all__ = ["main"]
