"""The argument parser every ``bild`` command line uses (``bild``, ``bild demo``, ``bild pair``): argparse with a
command and its help on one line, and an argument error as one line with exit status 2. Imports nothing heavy."""

from __future__ import annotations

import argparse


class _Formatter(argparse.HelpFormatter):
    """argparse's, with a command's name and its help on one line (argparse measures the names without
    the indent they are printed with, and wraps the longest)."""

    def add_argument(self, action):
        super().add_argument(action)
        for sub in getattr(action, "_choices_actions", ()):
            self._action_max_length = max(
                self._action_max_length, len(sub.metavar or sub.dest) + self._current_indent + 2
            )


class Parser(argparse.ArgumentParser):
    """argparse, with an error as one line (``prog: error: argument --x: invalid choice ...``), exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")
