"""Writing a file whole or not at all: readers never see half a file, a killed writer leaves the previous one."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # an atomic write's temporary: `.<name>.<8 hex>.tmp`
CANNOT_WRITE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)  # the disk's doing


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


def disk_error(err: BaseException | None) -> OSError | None:
    """The OSError behind err (itself, or the error it was raised from or while handling) when the disk refused a
    write (full, over quota, read-only, no permission); else None."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in CANNOT_WRITE:
            return err
        err = err.__cause__ or err.__context__
    return None


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries that killed atomic writes left in folder (no writer of its own may be running)."""
    stale = [p for p in Path(folder).glob(".*.tmp") if TEMPORARY.fullmatch(p.name)] if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
