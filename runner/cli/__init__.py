"""The `runner` command: argparse, the commands, and what a render shows while it runs."""

from runner.cli.main import main

__all__ = ["main"]
