"""Atomic file replacement: a reader sees the old content or the new, never half."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, temp_suffix: str = "") -> None:
    """Temp file in the same directory, fsync, rename over ``path``, fsync the dir.

    ``temp_suffix`` marks leftovers of a crash so a directory listing can skip them.
    """
    fd, tmp = tempfile.mkstemp(
        dir=path.parent,
        # a short name: ``path``'s own name may already be near NAME_MAX
        prefix=f".{path.name[:32]}.",
        suffix=temp_suffix,
    )
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # without this the rename itself may be lost on power failure
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
