"""`python3 -m replication <command> [...]`: one entry point for every step of the replication.

Each command lives in the module named after the thing it does; this file only dispatches.
"""
from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "demo-data": ("replication.data.demo", "generate the demo datasets in the six native formats"),
    "prepare": ("replication.data.prepare", "crop faces and write manifest.csv + report.json"),
    "pretrain": ("replication.pretrain", "demo only: CLIP-style pre-training of the tiny encoder"),
    "counts": ("replication.accounting", "parameter counts and GFLOPs, thesis vs replicated"),
    "train": ("replication.runs", "train/evaluate one method (resumable run folder)"),
    "reproduce": ("replication.reproduce", "run the notebooks in chapter order with papermill"),
    "bench": ("replication.bench", "GPU throughput/memory benchmark of every method"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: python3 -m replication <command> [options]\n\ncommands:\n" + "\n".join(lines)
              + "\n\n`python3 -m replication <command> --help` gives the command's options.")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    if os.name != "posix":  # the output folders' lock (fcntl.flock) and reproduce's Ctrl-C (os.killpg) are POSIX's
        print(f"{argv[0]}: error: this project runs on Linux or macOS; on Windows, run it inside WSL2",
              file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        return module.cli(argv[1:])
    except KeyboardInterrupt:  # while torch imports, or in a command with nothing to resume: no traceback
        print(f"\n{argv[0]}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
