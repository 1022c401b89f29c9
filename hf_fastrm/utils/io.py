"""Atomic file writes: nothing half-written is ever left under the final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path in the same folder; on success it is renamed onto `path`, on error removed.

    The rename is atomic on POSIX and Windows file systems, so readers see either the old file or the new one.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(handle)
    try:
        yield tmp_path
        # mkstemp creates the file readable by its owner only, and writers that replace the file (safetensors)
        # keep that; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` through a temporary file and a rename."""
    with atomic_path(path) as tmp_path, open(tmp_path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Calls ``writer(tmp_path)`` and renames the result onto `path` only if it returned normally."""
    with atomic_path(path) as tmp_path:
        writer(tmp_path)
