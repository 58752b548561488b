"""Dataset manifests: one JSON file per kind (raw, processed), entries keyed by name and version.

Raw files are hashed by their bytes (they are never regenerated). Processed files are hashed by
their canonical content (dates + column names + float64 values), so a rebuild with another
pyarrow version that writes different parquet bytes still verifies.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from common.errors import DataError
from common.files import TEMPORARY, atomic_write_bytes

RAW, PROCESSED = "raw", "processed"
BUILT = re.compile(r"(?P<ticker>[^/]+)\.dataset\.(?P<tier>[^/]+)/v(?P<version>[0-9]+)/data\.parquet")
_FIELD_TYPES = {"version": int, "rows": int, "columns": list, "sources": list, "notes": dict}  # the others: str


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, as 'sha256:<hex>'."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def frame_sha256(frame: pd.DataFrame) -> str:
    """sha256 of a processed frame's canonical content: date index, column names, float64 values.

    Independent of the file format and of library versions: only the numbers and names count.
    """
    digest = hashlib.sha256()
    header = {"index": frame.index.name, "columns": [str(c) for c in frame.columns]}
    digest.update(json.dumps(header, sort_keys=True).encode())
    dates = pd.DatetimeIndex(frame.index).as_unit("ns").asi8
    digest.update(np.ascontiguousarray(dates, dtype="<i8").tobytes())
    for column in frame.columns:
        values = frame[column].to_numpy(dtype=np.float64)
        digest.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    return "sha256:" + digest.hexdigest()


@dataclass
class Entry:
    """One registered dataset version."""

    name: str  # e.g. GSPC.OHLCV.daily (raw) or GSPC.dataset.a25 (processed)
    version: int
    tier: str  # "raw" for raw files, else the feature tier (a20, a25, c)
    path: str  # relative to the data directory
    hash: str  # raw: file bytes; processed: canonical content (see frame_sha256)
    rows: int
    first_date: str
    last_date: str
    columns: list[str]
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    sources: list[dict] = field(default_factory=list)  # processed: name, version, hash of each input
    notes: dict = field(default_factory=dict)  # counts the build or import reported (repairs, warm-up)

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


class Manifest:
    """A JSON list of entries at `<data_dir>/<kind>/manifest.json`."""

    def __init__(self, data_dir: Path, kind: str):
        self.data_dir = Path(data_dir)
        self.kind = kind
        self.path = self.data_dir / kind / "manifest.json"
        self.entries: list[Entry] = self._read()

    def _read(self) -> list[Entry]:
        if not self.path.exists():
            return []
        try:
            payload = json.loads(self.path.read_bytes())
            return [self._entry(item) for item in payload["entries"]]
        except (ValueError, KeyError, TypeError, RecursionError) as err:  # ValueError: not JSON or UTF-8, a bad field
            raise DataError(f"{self.path}: corrupt manifest ({err})") from None

    def _entry(self, item: dict) -> Entry:
        """An entry whose fields have their types and whose file lies inside `<data_dir>/<kind>/` (a hand-edited
        manifest cannot send a read or a write elsewhere)."""
        entry = Entry(**item)
        label = f"entry {entry.name!r}"
        for name in (f.name for f in fields(Entry)):
            value, wanted = getattr(entry, name), _FIELD_TYPES.get(name, str)
            if not isinstance(value, wanted) or isinstance(value, bool):
                raise ValueError(f"{label}: {name} is {str(value)[:40]!r}, not {wanted.__name__}")
        if entry.version < 1:
            raise ValueError(f"{label}: version {entry.version} is not ≥ 1")
        path = PurePosixPath(entry.path)
        if path.is_absolute() or ".." in path.parts or "\\" in entry.path or path.parts[:1] != (self.kind,):
            raise ValueError(f"{label}: path {entry.path!r} is not inside {self.kind}/")
        return entry

    def find(self, name: str, version: int | None = None) -> Entry | None:
        """The entry for name (and version; latest version when None), or None."""
        matches = [e for e in self.entries if e.name == name and version in (None, e.version)]
        return max(matches, key=lambda e: e.version) if matches else None

    def get(self, name: str, version: int | None = None) -> Entry:
        """Like find, but an unknown name or version is a DataError listing what exists."""
        entry = self.find(name, version)
        if entry is None:
            known = ", ".join(e.label for e in self.entries) or "none"
            wanted = name if version is None else f"{name} v{version}"
            raise DataError(f"unknown {self.kind} dataset {wanted} (registered: {known})")
        return entry

    def next_version(self, name: str) -> int:
        return max((e.version for e in self.entries if e.name == name), default=0) + 1

    def register(self, entry: Entry) -> None:
        """Add entry, replacing any entry with the same key (raw: name; processed: name + version)."""
        same_key = (
            (lambda e: e.name == entry.name)
            if self.kind == RAW
            else (lambda e: e.name == entry.name and e.version == entry.version)
        )
        self.entries = [e for e in self.entries if not same_key(e)] + [entry]
        self.entries.sort(key=lambda e: (e.name, e.version))
        payload = {"kind": self.kind, "entries": [asdict(e) for e in self.entries]}
        atomic_write_bytes(self.path, (json.dumps(payload, indent=2) + "\n").encode())

    def file(self, entry: Entry) -> Path:
        return self.data_dir / entry.path


def strays(data_dir: Path) -> list[tuple[Path, str]]:
    """Files under `raw/` and `processed/` that no manifest entry names, each with how to remove it: temporaries a
    killed writer left, a processed file a build wrote but did not register, a data file in raw/ nobody imported.
    Notes beside the raw files (SOURCES.md) are not strays."""
    found = []
    for kind in (RAW, PROCESSED):
        manifest = Manifest(data_dir, kind)
        folder = manifest.data_dir / kind
        named = {manifest.file(e) for e in manifest.entries} | {manifest.path}
        paths = sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()) if folder.is_dir() else []
        for path in (p for p in paths if p not in named):
            why = _stray(path.relative_to(folder).as_posix(), kind)
            if why:
                found.append((path, f"{why} remove it: rm '{path}'"))
    return found


def _stray(relative: str, kind: str) -> str:
    """Why a file no entry names is a stray ("" when it is not one)."""
    if TEMPORARY.fullmatch(relative.rsplit("/", 1)[-1]):
        return "a temporary that a killed or failed write left behind;"
    built = BUILT.fullmatch(relative) if kind == PROCESSED else None
    if built:
        return (
            "no manifest entry names it (a build stopped before registering it?); register it with `python cli.py "
            f"data build --ticker {built['ticker']} --tier {built['tier']} --version {built['version']}` (kept "
            "if it holds what that build makes), or"
        )
    if kind == PROCESSED or ".OHLCV." in relative:
        return "no manifest entry names it;"
    return ""
