"""Processed dataset versions: build (raw → features → parquet), register, and load with verification.

A version is immutable: rebuilding it with identical content is a no-op, with different content
it is refused and the next free version is named.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.files import atomic_write_bytes
from datamodules.features import TIERS, VIX_FEATURES, needs_vix, ohlcv_columns, ohlcv_features, vix_features
from datamodules.manifest import PROCESSED, RAW, Entry, Manifest, file_sha256, frame_sha256
from datamodules.sources import DATA_DIR, raw_name, read_ohlcv, ticker_name

VIX_TICKER = "VIX"
VIX_FILL_LIMIT = 5  # a GSPC day without a VIX print takes the last VIX value at most this many days old
MAX_VERSION = 9999


def dataset_name(ticker: str, tier: str) -> str:
    """'^gspc', 'a25' → 'GSPC.dataset.a25' (the ticker checked by `ticker_name`, the tier one of TIERS)."""
    if tier not in TIERS:
        raise DataError(f"unknown tier {tier!r} (choose from {', '.join(TIERS)})")
    return f"{ticker_name(ticker)}.dataset.{tier}"


@dataclass
class BuildResult:
    entry: Entry
    written: bool  # False: identical content was already registered under this version
    adopted: bool = False  # the file was there unregistered (a killed build's) with this content: registered as is


def _load_raw(ticker: str, data_dir: Path, require_volume: bool) -> tuple[pd.DataFrame, Entry]:
    manifest = Manifest(data_dir, RAW)
    entry = manifest.get(raw_name(ticker))
    path = manifest.file(entry)
    if not path.exists():
        raise DataError(f"{path}: raw file of {entry.label} is missing (restore data/raw or re-import it)")
    actual = file_sha256(path)
    if actual != entry.hash:
        raise DataError(
            f"{path}: hash mismatch for {entry.label} (expected {entry.hash}, got {actual}); "
            "restore the file or re-import it with data import"
        )
    allowed = "implausible_allowed" in entry.notes  # registered with --allow_implausible: the same bytes pass
    return read_ohlcv(path, require_volume, allow_implausible=allowed).frame, entry


def compute_dataset(ticker: str, tier: str, data_dir: Path = DATA_DIR) -> tuple[pd.DataFrame, list[Entry], dict]:
    """Raw prices + the tier's features, warm-up rows dropped. Returns frame, source entries, counts."""
    frame, sources, notes = _untrimmed(ticker, tier, data_dir)
    return _trim(frame, notes), sources, notes


def _untrimmed(ticker: str, tier: str, data_dir: Path) -> tuple[pd.DataFrame, list[Entry], dict]:
    if tier not in TIERS:
        raise DataError(f"unknown tier {tier!r} (choose from {', '.join(TIERS)})")
    ohlcv, source = _load_raw(ticker, data_dir, require_volume=True)
    frame = ohlcv_features(ohlcv, tier)
    sources, notes = [source], {"ticker": ticker_name(ticker)}
    if needs_vix(tier):
        frame, vix_source = _add_vix(frame, data_dir, notes)
        sources.append(vix_source)
    return frame, sources, notes


def _add_vix(frame: pd.DataFrame, data_dir: Path, notes: dict) -> tuple[pd.DataFrame, Entry]:
    """The VIX features on the frame's calendar (carried forward at most VIX_FILL_LIMIT days)."""
    vix, vix_source = _load_raw(VIX_TICKER, data_dir, require_volume=False)
    aligned = vix_features(vix).reindex(frame.index, method="ffill", limit=VIX_FILL_LIMIT)
    notes["vix_filled_days"] = int((~frame.index.isin(vix.index)).sum())
    return pd.concat([frame, aligned], axis=1), vix_source


def warmup_rows(ticker: str, data_dir: Path = DATA_DIR) -> dict[str, int]:
    """Leading rows each tier drops on `ticker`, from one build of the widest tier (VIX tiers left out
    when no intact VIX series is registered)."""
    widest = max((t for t in TIERS if not needs_vix(t)), key=lambda t: len(TIERS[t]))  # holds every own column
    frame, _, _ = _untrimmed(ticker, widest, data_dir)
    try:
        frame, _ = _add_vix(frame, data_dir, {})
    except DataError:
        pass
    complete = frame.notna()
    out = {}
    for tier, columns in TIERS.items():
        if set(columns) <= set(frame.columns):
            rows = complete[ohlcv_columns(tier) + [c for c in columns if c in VIX_FEATURES]].all(axis=1).to_numpy()
            out[tier] = int(np.argmax(rows)) if rows.any() else len(frame)
    return out


def _trim(frame: pd.DataFrame, notes: dict) -> pd.DataFrame:
    """Drop leading warm-up rows (and trailing rows past a source's end); any other gap is an error."""
    complete = frame.notna().all(axis=1).to_numpy()
    if not complete.any():
        raise DataError(
            f"too few rows: {len(frame)} rows do not cover the features' warm-up "
            "(sma_200 needs 200; tiers a100 and a200 need 251)"
        )
    first, last = np.flatnonzero(complete)[[0, -1]]
    notes["warmup_rows_dropped"] = int(first)
    notes["tail_rows_dropped"] = int(len(frame) - 1 - last)
    frame = frame.iloc[first : last + 1]
    holes = frame.isna().any(axis=0)
    if holes.any():
        column = holes.index[holes][0]
        date = frame.index[frame[column].isna().to_numpy()][0].date()
        raise DataError(f"feature {column} is NaN on {date} after warm-up (gap in the source data?)")
    values = frame.to_numpy(np.float64)
    if not np.isfinite(values).all():
        row, col = np.argwhere(~np.isfinite(values))[0]
        raise DataError(f"feature {frame.columns[col]} is infinite on {frame.index[row].date()}")
    return frame.astype(np.float64)


def build_dataset(ticker: str, tier: str, version: int | None = None, data_dir: Path = DATA_DIR) -> BuildResult:
    """Compute a dataset and register it as `version` (default: the latest if identical, else the next)."""
    name = dataset_name(ticker, tier)  # the request and the manifest are checked before any work
    if version is not None and not 1 <= version <= MAX_VERSION:
        raise DataError(f"version must be ≥ 1 and ≤ {MAX_VERSION}, got {version}")
    manifest = Manifest(data_dir, PROCESSED)
    frame, sources, notes = compute_dataset(ticker, tier, data_dir)
    digest = frame_sha256(frame)
    existing = manifest.find(name, version)
    if version is None:
        version = existing.version if existing and existing.hash == digest else manifest.next_version(name)
        existing = manifest.find(name, version)
    path = Path(PROCESSED) / name / f"v{version}" / "data.parquet"
    if existing and existing.hash != digest:
        raise DataError(
            f"{name} v{version} already exists with different content (registered {existing.hash[:19]}…, "
            f"built {digest[:19]}…); versions are immutable: use --version {manifest.next_version(name)}"
        )
    target = Path(data_dir) / path
    if existing and target.exists() and _content_hash(target) == digest:
        return BuildResult(existing, written=False)
    adopted = existing is None and (target.exists() or target.is_symlink())
    if adopted:
        _check_leftover(target, digest, _free_version(manifest, name))  # e.g. a build killed before it registered
    else:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=True)
        atomic_write_bytes(target, buffer.getvalue())  # a kill leaves at most a temporary (`data verify` names it)
    entry = Entry(
        name=name,
        version=version,
        tier=tier,
        path=str(path),
        hash=digest,
        rows=len(frame),
        first_date=frame.index[0].date().isoformat(),
        last_date=frame.index[-1].date().isoformat(),
        columns=list(frame.columns),
        sources=[{"name": s.name, "version": s.version, "hash": s.hash} for s in sources],
        notes=notes,
    )
    manifest.register(entry)
    return BuildResult(entry, written=True, adopted=adopted)


def _check_leftover(target: Path, digest: str, free: int) -> None:
    """An unregistered file where a build writes: one with the content being built is what a build killed between
    writing and registering leaves, and is registered as it is; anything else is refused, never overwritten."""
    if target.is_file() and not target.is_symlink() and _content_hash(target) == digest:
        return
    raise DataError(
        f"{target} exists but is not registered and holds other content; remove it (rm '{target}') or use "
        f"--version {free}"
    )


def _free_version(manifest: Manifest, name: str) -> int:
    """The first version after the registered ones with no folder in the way."""
    version = manifest.next_version(name)
    while (manifest.data_dir / PROCESSED / name / f"v{version}").exists():
        version += 1
    return version


def _content_hash(path: Path) -> str | None:
    try:
        return frame_sha256(pd.read_parquet(path))
    except Exception:  # an unreadable file simply does not match
        return None


def rebuild_hint(entry: Entry) -> str:
    ticker = entry.notes.get("ticker", entry.name.split(".")[0])
    return f"rebuild with: python cli.py data build --ticker {ticker} --tier {entry.tier} --version {entry.version}"


def load_dataset(name: str, version: int, data_dir: Path = DATA_DIR) -> tuple[pd.DataFrame, Entry]:
    """Read a registered processed version after checking its content hash against the manifest."""
    manifest = Manifest(data_dir, PROCESSED)
    entry = manifest.get(name, version)
    path = manifest.file(entry)
    if not path.exists():
        raise DataError(f"{path}: file of {entry.label} is missing; {rebuild_hint(entry)}")
    try:
        frame = pd.read_parquet(io.BytesIO(path.read_bytes()))
    except Exception as err:  # pyarrow raises several types for damaged files
        raise DataError(f"{path}: unreadable or corrupt ({type(err).__name__}); {rebuild_hint(entry)}") from None
    actual = frame_sha256(frame)
    if actual != entry.hash:
        raise DataError(
            f"{path}: hash mismatch for {entry.label} (expected {entry.hash}, got {actual}); {rebuild_hint(entry)}"
        )
    return frame, entry


def verify_all(data_dir: Path = DATA_DIR) -> list[str]:
    """Check every raw and processed entry; return one line per problem (empty when all match)."""
    problems = []
    for entry in Manifest(data_dir, RAW).entries:
        path = Path(data_dir) / entry.path
        actual = file_sha256(path) if path.exists() else "missing"
        if actual != entry.hash:
            problems.append(f"raw {entry.label}: {path} expected {entry.hash}, got {actual}")
    for entry in Manifest(data_dir, PROCESSED).entries:
        path = Path(data_dir) / entry.path
        actual = (_content_hash(path) or "unreadable") if path.exists() else "missing"
        if actual != entry.hash:
            problems.append(f"processed {entry.label}: {path} expected {entry.hash}, got {actual}")
    return problems
