"""File helpers shared by every package (standard library only): atomic writes and hashing.

Atomic writes:

A temp file in the destination folder is written, fsynced and renamed over the target, so readers see the old
file or the new one, never half of one, and an interrupted write leaves the old file intact.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: bytes | Callable[[IO[bytes]], None], overwrite: bool = True) -> None:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` atomically.

    With ``overwrite=False`` an existing file is never replaced, even one that appears while writing (InputError).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        _move_into_place(Path(tmp), path, overwrite)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # fails if the target appeared meanwhile: no silent replacement
    except FileExistsError as e:
        raise InputError(f"the output '{target}' appeared while it was being written; refusing to replace it. "
                         f"Choose another output path or pass overwrite=True") from e
    except OSError:  # file systems without hard links: re-check, then rename
        if target.exists():
            raise InputError(f"the output '{target}' already exists; refusing to replace it") from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
