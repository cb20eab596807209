"""Atomic writes: every file or folder the project writes appears whole or not at all.

Each helper writes next to the target, then renames over it (``os.replace`` is atomic within a file
system): a reader, a crash or a failure half-way never sees a half-written file, and the previous
version stays whole until the new one is complete. The temporary name holds the process id, so
concurrent writers never share one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (by any means: ``open``, ``torch.save``); on a clean
    exit it replaces ``path``, on an exception it is removed and ``path`` is left as it was.

    ``durable``: the file and the rename reach the disk before this returns (``fsync`` of both), for
    checkpoints that a crash right after must not lose."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        with contextlib.suppress(OSError):  # e.g. the folder went away: there is nothing to remove
            tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write text or bytes to ``path`` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            with open(tmp, "w", newline="") as f:
                f.write(data)


@contextmanager
def atomic_folder(target: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target`` to fill; on a clean exit it becomes ``target``.

    ``replace``: an existing ``target`` is swapped out (and deleted) only once the new folder is complete.
    Without it an existing ``target`` wins: a concurrent process that published the same content first
    (a cache) is fine, and the copy made here is dropped. Files get the usual permissions (mkdtemp makes
    an owner-only folder), since caches and exports may be shared."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for f in [tmp, *tmp.rglob("*")]:
            f.chmod(0o755 if f.is_dir() else 0o644)
        old = None
        if replace and target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if replace or not target.exists():  # not a lost race: a real error
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
