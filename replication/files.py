"""Atomic file writes and file hashes.

Results are written atomically (a temporary file beside the target, then os.replace) so that an interrupted
run never leaves a half-written file that a later run would trust: resuming, and skipping finished work, go by
which files exist.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` via ``write(tmp)`` on <name>.tmp beside it, then rename; creates the folder. A writer that
    picks its format from the file name must be given it (the temporary name ends in .tmp). (No fsync: this
    guards against the process dying, which is what resuming is for, not against power loss.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
