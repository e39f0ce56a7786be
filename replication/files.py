"""Atomic file writes, an output folder's lock, a check that an output can be written, reading a text input, and
file hashes.

Results are written atomically (a temporary file beside the target, then os.replace) so that an interrupted
run never leaves a half-written file that a later run would trust: resuming, and skipping finished work, go by
which files exist.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` via ``write(tmp)`` on <name>.<random>.tmp beside it, then rename; creates the folder. A writer
    that picks its format from the file name must be given it (the temporary name ends in .tmp). The name is new
    for each write, so two processes writing one file do not rename each other's half-written one (or find it
    gone: the fixed <name>.tmp did both); a write that fails removes it. (No fsync: this guards against the process
    dying, which is what resuming is for, not against power loss.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: nothing else would ever remove a randomly named file
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def exclusive_lock(path: str | Path, busy: Exception) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (made if missing, deleted as the lock is let go) while the block
    runs; ``busy`` is raised at once if another process holds it. Two processes writing one output folder (a
    run's, prepare's) would overwrite each other's files and redo each other's work. The lock is flock's, released
    by the kernel when its process dies: a process killed with kill -9 leaves at most an unlocked file, which the
    next one takes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise busy from None
            # the holder before us deletes the file as it lets go: a lock on the deleted file excludes no one
            # from the new one another process may have made, so take that one (the next pass)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                continue
            if os.path.samestat(os.fstat(lock.fileno()), current):
                try:
                    yield
                finally:
                    path.unlink()
                return


def check_writable(path: str | Path, kind: str) -> None:
    """Raise an OSError naming ``path`` unless a ``kind`` ("file" or "folder") can be written there: no folder
    where the file goes, no file where the folder or one above it goes, and write permission where it is made.
    Commands call it before their work: an output that could not be written used to fail only after it (bench's
    measurements, pretrain's training), losing the results."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a file")
    place = (path if kind == "folder" else path.parent).absolute()
    existing = next(p for p in (place, *place.parents) if p.exists())  # the root always exists
    if not existing.is_dir():
        raise NotADirectoryError(f"{path} is a file; expected a folder" if existing == path.absolute() else
                                 f"{path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{path}: no permission to write in {existing}")


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class NotTextError(ValueError):
    """An input file is not UTF-8 text (read_text); the message names the file, line and byte."""


def read_text(path: str | Path, expected: str) -> str:
    """The text of input file ``path``, which should be ``expected`` (what the file is, for the message). The
    datasets' label files and the manifest are ASCII/UTF-8 as released and as written: a byte-order mark (which
    spreadsheet programs add) is dropped, and any other encoding (a binary, a UTF-16 or Latin-1 re-save) is a
    NotTextError naming the file, line and byte. The bare codec error named neither, and the locale's encoding
    (which ``open`` uses by default) read such a file differently on another machine."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise NotTextError(f"{path} line {line}: byte 0x{data[err.start]:02x} is not UTF-8 text; expected "
                           f"{expected}, not a binary file or a copy saved in another encoding") from None


def sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
