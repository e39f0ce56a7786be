"""What the commands' ``cli()`` share: numbers checked as they are parsed, and one line instead of a traceback
for a mistake the user can fix or for Ctrl-C (as ``train`` reports them)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable

from replication.config import CONFIGS


def number(kind: type, low: float, high: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """An argparse ``type=``: ``kind(text)``, finite, at least ``low`` (more than it when ``above``) and at most
    ``high``; anything else is argparse's one-line error saying what was expected. A number out of range used to
    reach the work and fail inside it, or quietly do nothing (``prepare --size 0`` cropped no face)."""
    expected = (f"{'a whole number' if kind is int else 'a number'} {'>' if above else '>='} {low}"
                + ("" if high == math.inf else f" and <= {high}"))

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > low if above else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = number(int, 1)


def model_config(text: str) -> str:
    """An argparse ``type=`` for ``--config``: a name of config.CONFIGS (an unknown one was a KeyError traceback)."""
    if text not in CONFIGS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(CONFIGS)}, got {text!r}")
    return text


def checkpoint_blocks_problem(blocks: int, config: str) -> str | None:
    """What is wrong with ``--checkpoint-blocks N`` for ``config``'s vision tower (None: nothing), for `train` and
    `bench` alike. A number given above the blocks is a slip; a profile's own count may exceed a smaller model's
    blocks, which pe.Transformer reads as all of them, so that is not checked here."""
    layers = CONFIGS[config].vision.layers
    return None if blocks <= layers else f"--checkpoint-blocks {blocks}: {config} has {layers} blocks"


def prepared_file_error(prepared: Path) -> str:
    """The error of `train` and `pretrain` for a --prepared that is a file: manifest.csv given instead of the folder
    holding it was looked for as <file>/manifest.csv, and `prepare --out <file>` offered to make it."""
    return (f"--prepared {prepared} is a file; it takes the folder holding manifest.csv"
            + (f": --prepared {prepared.parent}" if prepared.name == "manifest.csv" else ""))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` of every command: each option's help followed by its default, where it has one the help does not
    already state (argparse's ArgumentDefaultsHelpFormatter also prints "(default: None)" and "(default: False)"
    for options that have none); the description keeps its own line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


def reported(command: str, work: Callable[[], int], errors: tuple[type[BaseException], ...],
             resume: str | None = None) -> int:
    """``work()``'s exit status. An error in ``errors`` (what the user can fix, whose message names the file and
    what was expected) is one line ``<command>: error: ...``, exit 2, like argparse's. Given ``resume`` (what
    running the same command again does), Ctrl-C is one line saying so, exit 130; without it, Ctrl-C goes on up."""
    try:
        return work()
    except errors as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if resume is None:
            raise
        print(f"\n{command}: interrupted; the same command {resume}", file=sys.stderr)
        return 130
