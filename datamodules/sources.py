"""Raw OHLCV sources: read and validate a CSV, register it in the raw manifest, import, download.

A raw file is kept byte for byte as it came (so its hash matches its upstream); every read applies
the same validation and repair, and the repair count is recorded when the file is registered.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.files import atomic_write_bytes
from datamodules.manifest import RAW, Entry, Manifest, file_sha256
from datamodules.plausibility import implausible

PRICE_COLUMNS = ["Open", "High", "Low", "Close"]
VOLUME_FILL_LIMIT = 5  # consecutive zero-volume days after the first traded one that are carried forward
OPTIONAL_COLUMNS = ["Adj Close", "Volume"]
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
# yfinance's spelling (SPY, ^GSPC, BRK-B, 000001.SS, EURUSD=X, GC=F): no path separator, no leading dot or dash
TICKER = re.compile(r"\^?[A-Za-z0-9][A-Za-z0-9.=-]{0,19}")
TICKER_SYNTAX = "1-20 letters, digits, '.', '-' or '=', starting with a letter or digit, optionally after one '^'"


def ticker_name(ticker: str) -> str:
    """The registered spelling of a user's ticker ('^gspc ' → 'GSPC'), which names its files
    (`<TICKER>.OHLCV.daily.csv.gz`, `<TICKER>.dataset.<tier>/`); anything else is a DataError. Every ticker a
    user gives (CLI, `data.tickers`) goes through this before it becomes part of a path."""
    text = ticker.strip() if isinstance(ticker, str) else None
    if text is None or not TICKER.fullmatch(text):
        shown = repr(ticker) if len(repr(ticker)) <= 42 else repr(ticker)[:40] + "…"
        raise DataError(f"invalid ticker {shown}: a ticker is {TICKER_SYNTAX} (e.g. SPY, ^GSPC, BRK-B, EURUSD=X)")
    return text.lstrip("^").upper()


def split_tickers(text: str) -> list[str]:
    """'SPY, ^DJI' → ['SPY', '^DJI'] (as given, for the download symbol), each checked by `ticker_name`."""
    tickers = [t.strip() for t in text.split(",")]
    if "" in tickers:
        raise DataError(f"empty ticker in {text!r}: give tickers separated by single commas, e.g. SPY,DIA")
    for ticker in tickers:
        ticker_name(ticker)
    return tickers


def raw_name(ticker: str) -> str:
    """Raw dataset name for a ticker: '^GSPC' → 'GSPC.OHLCV.daily'."""
    return f"{ticker_name(ticker)}.OHLCV.daily"


@dataclass
class OHLCV:
    """A validated daily OHLCV frame (DatetimeIndex 'Date', float64 columns) and its repair count."""

    frame: pd.DataFrame
    repaired_rows: int  # High/Low clipped to the Open–Close body
    volume_filled_rows: int = 0  # a zero Volume between traded days: the previous day's volume carried forward
    volume_unknown_rows: int = 0  # zero Volume before the first traded day: NaN (volume features start later)
    implausible: dict[str, str] = field(default_factory=dict)  # rule → what broke it (see datamodules/plausibility)


def read_ohlcv(path: Path, require_volume: bool = True, allow_implausible: bool = False) -> OHLCV:
    """Read a daily OHLCV CSV (optionally gzipped; headers case-insensitive) and validate it.

    Rows whose High or Low contradicts Open or Close are repaired by clipping (High raised to
    max(Open, Close), Low lowered to min(Open, Close)) and counted. A Volume of exactly 0 is a missing
    print (NASDAQ's file has two): see `_zero_volume`. Anything else that is wrong is a DataError naming the
    file and the first offending date, and so is a series that breaks a plausibility rule
    (`datamodules/plausibility.py`) unless `allow_implausible`.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a CSV file")
    try:
        raw = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:  # pandas raises many types for unreadable input
        raise DataError(f"{path}: unreadable or corrupt ({type(err).__name__}: {_first_line(err)})") from None
    data = OHLCV(*_validate(raw, path, require_volume))
    data.implausible = implausible(data.frame)
    if data.implausible and not allow_implausible:
        (rule, line), *others = data.implausible.items()
        also = f" (also: {', '.join(r for r, _ in others)})" if others else ""
        raise DataError(f"{path}: implausible series, rule {rule}: {line}{also}; if the series is real, "
                        "pass --allow_implausible")  # fmt: skip
    return data


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else "no details"


def _validate(raw: pd.DataFrame, path: Path, require_volume: bool) -> tuple[pd.DataFrame, int, int, int]:
    canonical = {c.lower(): c for c in ["Date", *PRICE_COLUMNS, *OPTIONAL_COLUMNS]}
    renamed = raw.rename(columns=lambda c: canonical.get(str(c).strip().lower(), str(c).strip()))
    required = ["Date", *PRICE_COLUMNS] + (["Volume"] if require_volume else [])
    missing = [c for c in required if c not in renamed.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, raw.columns))})")
    keep = [c for c in [*PRICE_COLUMNS, *OPTIONAL_COLUMNS] if c in renamed.columns]
    dates = _parse_dates(renamed["Date"], path)
    try:
        frame = renamed[keep].astype(np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: non-numeric price or volume ({_first_line(err)})") from None
    frame.index = pd.DatetimeIndex(dates, name="Date")
    _check_rows(frame, path)
    if not require_volume and "Volume" in frame and (frame["Volume"] == 0).all():
        frame = frame.drop(columns="Volume")  # e.g. yfinance's ^VIX: a Volume column of zeros is no volume
    frame, repaired = _repair(frame)
    frame, filled, unknown = _zero_volume(frame, path)
    return frame, repaired, filled, unknown


def _parse_dates(column: pd.Series, path: Path) -> pd.DatetimeIndex:
    text = column.astype(str)
    for fmt in ("ISO8601", "%m/%d/%Y"):
        try:
            return pd.DatetimeIndex(pd.to_datetime(text, format=fmt)).tz_localize(None).normalize()
        except (ValueError, TypeError):
            continue
    raise DataError(f"{path}: unparseable dates (expected YYYY-MM-DD or MM/DD/YYYY, e.g. {text.iloc[0]!r})")


def _check_rows(frame: pd.DataFrame, path: Path) -> None:
    def first(mask: np.ndarray) -> str:
        return frame.index[np.flatnonzero(mask)[0]].date().isoformat()

    if len(frame) == 0:
        raise DataError(f"{path}: no rows")
    prices = frame[PRICE_COLUMNS].to_numpy()
    bad = ~np.isfinite(prices).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: {bad.sum()} row(s) with NaN or inf in OHLC (first {first(bad)})")
    if "Volume" in frame:
        volume = frame["Volume"].to_numpy()
        bad = ~np.isfinite(volume) | (volume < 0)
        if bad.any():
            raise DataError(f"{path}: {bad.sum()} row(s) with missing or negative Volume (first {first(bad)})")
    bad = (frame["High"] < frame["Low"]).to_numpy()
    if bad.any():
        raise DataError(f"{path}: {bad.sum()} row(s) with High < Low (first {first(bad)})")
    bad = (prices <= 0).any(axis=1)
    if bad.any():
        raise DataError(f"{path}: {bad.sum()} row(s) with a non-positive price (first {first(bad)})")
    duplicated = frame.index.duplicated()
    if duplicated.any():
        raise DataError(f"{path}: {duplicated.sum()} duplicate date(s) (first {first(duplicated)})")
    steps = np.diff(frame.index.asi8)
    if (steps < 0).any():
        raise DataError(f"{path}: dates not sorted ascending (first out of order {first(np.r_[False, steps < 0])})")


def _repair(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    body_high = frame[["Open", "Close"]].max(axis=1)
    body_low = frame[["Open", "Close"]].min(axis=1)
    broken = (frame["High"] < body_high) | (frame["Low"] > body_low)
    frame["High"] = np.maximum(frame["High"], body_high)
    frame["Low"] = np.minimum(frame["Low"], body_low)
    return frame, int(broken.sum())


def _zero_volume(frame: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, int, int]:
    """Zero volumes are missing prints. Before the first traded day (yfinance's index histories start with years of
    them) the volume is unknown: NaN, so the volume features start where the volume does. Later, a run of at most
    VOLUME_FILL_LIMIT days takes the previous day's volume; a longer run is refused. Returns the frame and the
    counts of filled and unknown rows."""
    if "Volume" not in frame:
        return frame, 0, 0
    zero = (frame["Volume"] == 0).to_numpy()
    if zero.all():
        raise DataError(f"{path}: Volume is 0 on every row (an index without volume: import it with --no-volume)")
    unknown = int(np.argmax(~zero))  # leading zero rows
    runs = pd.Series(zero[unknown:]).groupby((~pd.Series(zero[unknown:])).cumsum()).sum()
    if runs.max() > VOLUME_FILL_LIMIT:
        day = frame.index[unknown + int(np.flatnonzero(zero[unknown:])[0])].date()
        raise DataError(f"{path}: Volume is 0 on {int(runs.max())} days in a row (from {day} or later); at most "
                        f"{VOLUME_FILL_LIMIT} missing days are carried forward")  # fmt: skip
    frame = frame.copy()
    volume = frame["Volume"].mask(zero)
    frame["Volume"] = pd.concat([volume.iloc[:unknown], volume.iloc[unknown:].ffill()])
    return frame, int(zero[unknown:].sum()), unknown


def register_raw(
    path: Path, ticker: str, data_dir: Path = DATA_DIR, require_volume: bool = True, allow_implausible: bool = False
) -> Entry:
    """Validate a raw file already inside `<data_dir>/raw/` and (re)register it in the raw manifest. An implausible
    series that was allowed keeps the rules it broke in `notes.implausible_allowed`."""
    manifest = Manifest(data_dir, RAW)
    data = read_ohlcv(path, require_volume, allow_implausible)
    name = raw_name(ticker)
    digest = file_sha256(path)
    previous = manifest.find(name)
    same = previous is not None and previous.hash == digest
    version = previous.version if same else manifest.next_version(name)
    entry = Entry(
        name=name,
        version=version,
        tier=RAW,
        path=str(Path(path).resolve().relative_to(Path(data_dir).resolve())),
        hash=digest,
        rows=len(data.frame),
        first_date=data.frame.index[0].date().isoformat(),
        last_date=data.frame.index[-1].date().isoformat(),
        columns=list(data.frame.columns),
        notes={"repaired_rows": data.repaired_rows, "volume_filled_rows": data.volume_filled_rows}
        | ({"volume_unknown_rows": data.volume_unknown_rows} if data.volume_unknown_rows else {})
        | ({"implausible_allowed": data.implausible} if data.implausible else {}),
    )
    if same:
        entry.created = previous.created  # the same bytes registered again: the same entry
    manifest.register(entry)
    return entry


def import_csv(
    csv: Path, ticker: str, data_dir: Path = DATA_DIR, require_volume: bool = True, allow_implausible: bool = False
) -> Entry:
    """Validate a user's OHLCV CSV, copy it into `<data_dir>/raw/` and register it.

    The ticker, the user's file and the raw manifest are checked first: bad input writes nothing.
    """
    csv, name = Path(csv), raw_name(ticker)
    read_ohlcv(csv, require_volume, allow_implausible)
    Manifest(data_dir, RAW)  # a corrupt manifest is refused before the file is copied
    target = Path(data_dir) / RAW / f"{name}{'.csv.gz' if csv.name.endswith('.gz') else '.csv'}"
    if csv.resolve() != target.resolve():
        atomic_write_bytes(target, csv.read_bytes())
    return register_raw(target, ticker, data_dir, require_volume, allow_implausible)


def _check_new_names(tickers: list[str], data_dir: Path) -> None:
    """Every ticker well-formed and named once, and the raw manifest readable: checked before anything is
    fetched or copied."""
    names = [raw_name(ticker) for ticker in tickers]
    if not names:
        raise DataError("no ticker given")
    if len(set(names)) != len(names):
        raise DataError(f"a ticker is named twice: {', '.join(tickers)}")
    Manifest(data_dir, RAW)


def import_many(
    files: list[tuple[Path, str]],
    data_dir: Path = DATA_DIR,
    require_volume: bool = True,
    allow_implausible: bool = False,
) -> list[Entry]:
    """Import several (csv, ticker) pairs: every file is validated before any is copied, so one bad file writes
    nothing."""
    _check_new_names([ticker for _, ticker in files], data_dir)
    for csv, _ in files:
        read_ohlcv(Path(csv), require_volume, allow_implausible)
    return [import_csv(csv, ticker, data_dir, require_volume, allow_implausible) for csv, ticker in files]


def download(
    tickers: list[str],
    data_dir: Path = DATA_DIR,
    symbols: list[str] | None = None,
    require_volume: bool = True,
    allow_implausible: bool = False,
) -> list[Entry]:
    """Fetch daily OHLCV of every ticker through yfinance (optional extra), then import them all like CSVs. A
    failed or empty download writes nothing (not even the tickers fetched before it). `^DJI` is stored as DJI.
    Tickers and symbols are checked before anything is fetched."""
    _check_new_names(tickers, data_dir)
    symbols = symbols or list(tickers)
    if len(symbols) != len(tickers):
        raise DataError(f"{len(symbols)} symbol(s) for {len(tickers)} ticker(s); give one per ticker")
    for symbol in symbols:
        if not re.fullmatch(r"[!-~]{1,40}", symbol):  # printable, no spaces: yfinance's symbols
            raise DataError(f"invalid symbol {symbol[:40]!r}: 1-40 printable characters without spaces")
    try:
        import yfinance
    except ImportError:
        raise DataError(
            "data download needs yfinance: pip install 'finscale[download]' (or use data import --csv)"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        pairs = zip(tickers, symbols, strict=True)
        files = [(_fetch(yfinance, symbol, Path(tmp) / f"{raw_name(t)}.csv"), t) for t, symbol in pairs]
        return import_many(files, data_dir, require_volume, allow_implausible)


def _fetch(yfinance, symbol: str, csv: Path) -> Path:
    try:
        history = yfinance.Ticker(symbol).history(period="max", interval="1d", auto_adjust=False)
    except Exception as err:  # network failures surface as many exception types
        raise DataError(f"download of {symbol} failed ({type(err).__name__}: {_first_line(err)})") from None
    if history is None or len(history) == 0:
        raise DataError(f"download of {symbol} returned no rows (offline, or unknown symbol)")
    history.index = pd.DatetimeIndex(history.index).tz_localize(None).normalize()
    columns = [c for c in [*PRICE_COLUMNS, *OPTIONAL_COLUMNS] if c in history.columns]
    history[columns].rename_axis("Date").to_csv(csv, date_format="%Y-%m-%d")
    return csv
