"""Bad input to `cli.py data …`: every case is refused with one `error: …` line, exit 2, no traceback, and nothing
under the data folder (or beside it) created, changed or removed. In-process through `cli.main`, except one test
(the issue's escaping ticker), which runs a real subprocess. `download` cases are all refused before anything is
fetched."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHIPPED_DATA, assert_refused, assert_user_error, run_cli, snapshot, synthetic_ohlcv, write_csv

Setup = Callable[[Path, Path], list[str]]  # (data_dir, tmp_path) → the arguments after `data <command>`


def _csv(edit: Callable[[pd.DataFrame], pd.DataFrame] | None = None, name: str = "x.csv") -> Callable[[Path], str]:
    """A synthetic OHLCV CSV (400 business days from 2001), changed by `edit`, written under tmp_path."""

    def make(tmp_path: Path) -> str:
        frame = synthetic_ohlcv(400)
        return str(write_csv(edit(frame.copy()) if edit else frame, tmp_path / name))

    return make


def _raw_bytes(content: bytes, name: str = "x.csv") -> Callable[[Path], str]:
    def make(tmp_path: Path) -> str:
        (tmp_path / name).write_bytes(content)
        return str(tmp_path / name)

    return make


def _set(frame: pd.DataFrame, row: int, column: str, value: float) -> pd.DataFrame:
    frame.iloc[row, frame.columns.get_loc(column)] = value
    return frame


def _hole(frame: pd.DataFrame) -> pd.DataFrame:
    frame.index = frame.index.where(np.arange(len(frame)) < 200, frame.index + pd.Timedelta(days=3650))
    return frame.rename_axis("Date")


def _spike(frame: pd.DataFrame) -> pd.DataFrame:
    frame.iloc[200, :4] = frame.iloc[200, :4] * 1000  # one day 1000× (a unit or decimal slip), the next back
    return frame


def _stale(frame: pd.DataFrame) -> pd.DataFrame:
    frame.iloc[100:115, :4] = frame.iloc[99, 3]  # a feed stuck on one price for 15 days
    return frame


def _future(frame: pd.DataFrame) -> pd.DataFrame:
    frame.index = pd.bdate_range(pd.Timestamp.now().normalize() - pd.Timedelta(days=300), periods=len(frame))
    return frame.rename_axis("Date")


def _import(make: Callable[[Path], str], ticker: str = "SPY", *extra: str) -> Setup:
    return lambda data_dir, tmp_path: ["import", "--csv", make(tmp_path), "--ticker", ticker, *extra]


IMPORT_FILES = {
    "empty file": (_import(_raw_bytes(b"")), "unreadable or corrupt"),
    "header only": (_import(_raw_bytes(b"Date,Open,High,Low,Close,Volume\n")), "no rows"),
    "binary": (_import(_raw_bytes(bytes(range(256)) * 8)), "unreadable or corrupt"),
    "not gzip": (_import(_raw_bytes(b"\x1f\x8b\x08\x00garbage", "x.csv.gz")), "unreadable or corrupt"),
    "truncated gzip": (
        _import(_raw_bytes((SHIPPED_DATA / "raw" / "GSPC.OHLCV.daily.csv.gz").read_bytes()[:9000], "x.csv.gz")),
        "unreadable or corrupt",
    ),
    "latin-1 bytes": (_import(_raw_bytes(b"Date,Open,High,Low,Close,Volume\n2020-01-02,1\xe9,2,1,1,9\n")), "corrupt"),
    "missing column": (_import(_csv(lambda f: f.drop(columns="Close"))), "missing column(s) Close"),
    "no volume": (_import(_csv(lambda f: f.drop(columns="Volume"))), "missing column(s) Volume"),
    "NaN close": (_import(_csv(lambda f: _set(f, 30, "Close", np.nan))), "NaN or inf in OHLC"),
    "bad dates": (_import(_raw_bytes(b"Date,Open,High,Low,Close,Volume\n31.12.2020,1,2,1,1,9\n")), "unparseable dates"),
    "text price": (_import(_raw_bytes(b"Date,Open,High,Low,Close,Volume\n2020-01-02,abc,2,1,1,9\n")), "non-numeric"),
    "High < Low": (_import(_csv(lambda f: _set(f, 30, "High", f["Low"].iloc[30] / 2))), "High < Low"),
    "zero price": (_import(_csv(lambda f: _set(f, 30, "Low", 0.0))), "non-positive price"),
    "negative volume": (_import(_csv(lambda f: _set(f, 30, "Volume", -5.0))), "negative Volume"),
    "volume all zero": (_import(_csv(lambda f: _set(f, slice(None), "Volume", 0.0))), "Volume is 0 on every row"),
    "duplicate date": (_import(_csv(lambda f: pd.concat([f.iloc[:31], f.iloc[30:]]))), "duplicate date"),
    "unsorted dates": (_import(_csv(lambda f: f.iloc[::-1])), "not sorted"),
    "10-year hole": (_import(_csv(_hole)), "rule gap: 3653 calendar days between rows 2001-10-05 and 2011-10-06"),
    "1000x spike": (_import(_csv(_spike)), "rule jump: Close on 2001-10-08 is 993.4× the previous close"),
    "decimal slip": (_import(_csv(lambda f: _set(f, 250, "Low", f["Low"].iloc[250] / 10))), "rule jump: Low on"),
    "High 5x Low": (_import(_csv(lambda f: _set(f, 0, "High", f["Low"].iloc[0] * 5))), "rule range: High on 2001"),
    "stuck feed": (_import(_csv(_stale)), "rule stale: Close is"),
    "future dates": (_import(_csv(_future)), "rule future: row dated"),
    "csv is a folder": (lambda data_dir, tmp_path: ["import", "--csv", str(tmp_path), "--ticker", "SPY"], "folder"),
    "csv not found": (_import(lambda tmp_path: str(tmp_path / "nope.csv")), "file not found"),
}

EVIL = ["../../evil", "~/evil", ".hidden", "-rf", "a/b", "a\\b", "^^GSPC", "SPY DIA", "A" * 21, "", "SPY\nDIA"]


def _two_files(tickers: str, second: Callable[[Path], str] = _csv(name="y.csv")) -> Setup:
    return lambda data_dir, tmp_path: ["import", "--csv", _csv()(tmp_path), second(tmp_path), "--tickers", tickers]


TICKERS = {f"import ticker {name!r}": (_import(_csv(), name), "ticker") for name in EVIL} | {
    "import 2 files 1 ticker": (_two_files("SPY"), "2 file(s) but 1 ticker(s)"),
    "import ticker twice": (_two_files("SPY,^spy"), "named twice"),
    "import good then bad": (_two_files("AAA,BBB", _csv(_spike, "y.csv")), "y.csv: implausible series"),
}


def _edit_manifest(kind: str, edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(data_dir: Path) -> None:
        path = data_dir / kind / "manifest.json"
        payload = json.loads(path.read_text())
        edit(payload)
        path.write_text(json.dumps(payload))

    return apply


def _first_entry(**fields) -> Callable[[dict], object]:
    """Edit a manifest's first entry; in the processed one GSPC.dataset.a25's (what `data build` makes by default)."""
    entries = lambda payload: [e for e in payload["entries"] if e["name"] == "GSPC.dataset.a25"] or payload["entries"]  # noqa: E731
    return lambda payload: entries(payload)[0].update(fields)


def _write(relative: str, content: bytes) -> Callable[[Path], None]:
    return lambda data_dir: (data_dir / relative).write_bytes(content)


def _write_new(relative: str, content: bytes | None) -> Callable[[Path], None]:
    """A new file under the data folder (None: a folder of that name)."""

    def write(data_dir: Path) -> None:
        (data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            (data_dir / relative).mkdir()
        else:
            (data_dir / relative).write_bytes(content)

    return write


def _unregistered_v2(content: bytes | None = None) -> Callable[[Path], None]:
    """An unregistered processed/GSPC.dataset.a25/v2/data.parquet: v1's bytes changed to `content` (None: one value
    changed, a readable parquet of other content)."""

    def make(data_dir: Path) -> None:
        v1 = data_dir / "processed" / "GSPC.dataset.a25" / "v1" / "data.parquet"
        (v1.parent.parent / "v2").mkdir()
        if content is None:
            frame = pd.read_parquet(v1)
            frame.iloc[0, 0] += 1.0
            frame.to_parquet(v1.parent.parent / "v2" / "data.parquet")
        else:
            (v1.parent.parent / "v2" / "data.parquet").write_bytes(content)

    return make


def _in(damage: Callable[[Path], None], *argv: str) -> Setup:
    """The arguments, after damaging the private data folder (before the refusal's snapshot)."""

    def setup(data_dir: Path, tmp_path: Path) -> list[str]:
        damage(data_dir)
        return list(argv)

    return setup


GSPC_RAW = "raw/GSPC.OHLCV.daily.csv.gz"
DAMAGED = {
    "build unknown ticker": (_in(lambda d: None, "build", "--ticker", "NOPE"), "unknown raw dataset NOPE.OHLCV"),
    "build ticker escapes": (_in(lambda d: None, "build", "--ticker", "../../GSPC"), "invalid ticker"),
    "build version 0": (_in(lambda d: None, "build", "--version", "0"), "version must be ≥ 1"),
    "build version -1": (_in(lambda d: None, "build", "--version", "-1"), "version must be ≥ 1"),
    "build version huge": (_in(lambda d: None, "build", "--version", str(10**40)), "≤ 9999"),
    "build version text": (_in(lambda d: None, "build", "--version", "1.5"), "invalid int value"),
    "build unknown tier": (_in(lambda d: None, "build", "--tier", "a30"), "invalid choice: 'a30'"),
    "build tampered raw": (_in(_write(GSPC_RAW, b"\x1f\x8b broken"), "build"), "hash mismatch for GSPC.OHLCV"),
    "build raw file gone": (_in(lambda d: (d / GSPC_RAW).unlink(), "build"), "raw file of GSPC.OHLCV.daily v1 is miss"),
    "build c tampered VIX": (
        _in(_write("raw/VIX.OHLCV.daily.csv.gz", b"x"), "build", "--tier", "c", "--version", "1"),
        "hash mismatch for VIX",
    ),
    "build raw manifest not JSON": (_in(_write("raw/manifest.json", b"{not json"), "build"), "corrupt manifest"),
    "build processed manifest binary": (
        _in(_write("processed/manifest.json", bytes(range(256))), "build"),
        "corrupt manifest",
    ),
    "build manifest path escapes": (
        _in(_edit_manifest("processed", _first_entry(path="processed/../../../evil.parquet")), "build"),
        "is not inside processed/",
    ),
    "build registered hash differs": (
        _in(_edit_manifest("processed", _first_entry(hash="sha256:" + "0" * 64)), "build", "--version", "1"),
        "already exists with different content",
    ),
    "build unregistered other content in the way": (
        _in(_unregistered_v2(), "build", "--version", "2"),
        "exists but is not registered and holds other content; remove it",
    ),
    "build unregistered garbage in the way": (_in(_unregistered_v2(b"PAR1 cut"), "build", "--version", "2"), "rm '"),
    "build unregistered empty file as next": (
        _in(_write_new("processed/GSPC.dataset.a20/v1/data.parquet", b""), "build", "--tier", "a20"),
        "or use --version 2",
    ),
    "build unregistered folder in the way": (
        _in(_write_new("processed/GSPC.dataset.a25/v2/data.parquet", None), "build", "--version", "2"),
        "exists but is not registered",
    ),
    "verify manifest entries not a list": (
        _in(_edit_manifest("raw", lambda p: p.update(entries=5)), "verify"),
        "corrupt manifest",
    ),
    "verify manifest unknown field": (_in(_edit_manifest("raw", _first_entry(owner="me")), "verify"), "corrupt"),
    "verify manifest absolute path": (
        _in(_edit_manifest("raw", _first_entry(path="/etc/passwd")), "verify"),
        "is not inside raw/",
    ),
    "verify manifest version text": (
        _in(_edit_manifest("raw", _first_entry(version="1")), "verify"),
        "version is '1', not int",
    ),
    "list manifest rows text": (_in(_edit_manifest("processed", _first_entry(rows="many")), "list"), "rows is"),
    "list manifest deep JSON": (_in(_write("raw/manifest.json", b"[" * 100_000), "list"), "corrupt manifest"),
}


def _download(*argv: str) -> Setup:
    return lambda data_dir, tmp_path: ["download", *argv]


DOWNLOADS = {
    "download ticker escapes": (_download("--tickers", "SPY,../../evil"), "invalid ticker '../../evil'"),
    "download empty ticker": (_download("--tickers", "SPY,,DIA"), "empty ticker"),
    "download no ticker": (_download("--tickers", ","), "empty ticker"),
    "download symbol for two": (_download("--tickers", "SPY,DIA", "--symbol", "^GSPC"), "--symbol goes with one"),
    "download symbol with space": (_download("--ticker", "GSPC", "--symbol", "^GS PC"), "invalid symbol"),
    "download ticker twice": (_download("--tickers", "^DJI,DJI"), "named twice"),
    "download corrupt manifest": (
        _in(_write("raw/manifest.json", b"[]"), "download", "--tickers", "SPY"),
        "corrupt manifest",
    ),
}

CASES = IMPORT_FILES | TICKERS | DAMAGED | DOWNLOADS


@pytest.fixture
def no_network(monkeypatch):
    """A yfinance that fails the test if anything is fetched (and stands in where the extra is not installed)."""

    def fetch(symbol):
        raise AssertionError(f"fetched {symbol}: a refusal must come before any download")

    monkeypatch.setitem(sys.modules, "yfinance", types.SimpleNamespace(Ticker=fetch))


@pytest.mark.parametrize(("setup", "fragment"), list(CASES.values()), ids=list(CASES))
def test_bad_input_is_refused_and_nothing_changes(data_dir, tmp_path, capsys, no_network, setup, fragment):
    argv = setup(data_dir, tmp_path)
    assert_refused(["data", *argv, "--data_dir", str(data_dir)], fragment, capsys, tmp_path)


@pytest.mark.parametrize("command", ["build", "verify", "list", "import --csv x.csv --ticker X"])
def test_a_data_dir_that_is_a_file_is_refused(tmp_path, capsys, command):
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file")
    argv = ["data", *command.split(), "--data_dir", str(not_a_folder)]
    assert_refused(argv, "is not a folder", capsys, tmp_path)


def test_the_issues_escaping_ticker_in_a_real_process(data_dir, tmp_path):
    csv = write_csv(synthetic_ohlcv(400), tmp_path / "x.csv")
    before = snapshot(tmp_path)
    result = run_cli("data", "import", "--csv", str(csv), "--ticker", "../../evil", "--data_dir", str(data_dir))
    assert_user_error(result, "invalid ticker '../../evil'")
    assert snapshot(tmp_path) == before


def test_the_issues_hole_is_refused_then_allowed_on_request(data_dir, tmp_path, capsys):
    import cli

    csv = write_csv(_hole(synthetic_ohlcv(400)), tmp_path / "x.csv")
    argv = ["data", "import", "--csv", str(csv), "--ticker", "HOLE", "--data_dir", str(data_dir)]
    assert_refused(argv, "rule gap: 3653 calendar days", capsys, tmp_path)
    assert cli.main([*argv, "--allow_implausible"]) == 0
    assert "allowed implausible gap: 3653 calendar days" in " ".join(capsys.readouterr().out.split())
