"""Writing a file whole or not at all: readers never see half a file, a killed writer leaves the previous one."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file whose content replaces path when the block ends, via a temporary file beside it (the same file
    system) and a rename: readers never see half a file, and a failed write (a full disk) or a killed writer leaves
    the previous file and no temporary. The file gets the mode any new file gets (0666 less the umask), not
    mkstemp's 0600. The temporary's name is unique per writer, so several processes (hpo workers) may write one path
    at once. An OSError names path (a full disk's error from a write names no file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path whole or not at all (`atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def _new_file(path: Path) -> tuple[int, Path]:
    """A new, empty, uniquely named file beside path, opened for writing. Created with mode 0666 so that the
    kernel applies the umask (reading the umask would mean changing it, which is not thread-safe)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")
