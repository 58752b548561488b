"""`cli.py data …` through real subprocesses: exit codes, one-line errors, nothing written on bad input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, assert_user_error, run_cli, synthetic_ohlcv, write_csv


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, env=env)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_list_verify_and_a_no_op_build_on_the_shipped_data(data_dir):
    listed = run("data", "list", "--data-dir", str(data_dir))
    assert listed.returncode == 0
    for name in ("GSPC.OHLCV.daily", "IXIC.OHLCV.daily", "VIX.OHLCV.daily", "GSPC.dataset.a25", "IXIC.dataset.a25"):
        assert name in listed.stdout
    import yaml

    from lightning_modules.budget import parameter_count
    from lightning_modules.patchtst import PatchTSTConfig

    two_billion = PatchTSTConfig(**yaml.safe_load((ROOT / "configs" / "2B.yaml").read_text())["model"]["net"])
    row = next(line for line in listed.stdout.splitlines() if line.startswith("│ a200+c "))
    assert "208" in row and "yes" in row and f"{parameter_count(208, 80, two_billion):,}" in row  # a tier × budget
    verified = run("data", "verify", "--data-dir", str(data_dir))
    assert verified.returncode == 0 and "all 7 entries match" in verified.stdout
    before = snapshot(data_dir)
    built = run("data", "build", "--ticker", "GSPC", "--tier", "a25", "--version", "1", "--data-dir", str(data_dir))
    assert built.returncode == 0 and "up to date" in built.stdout
    assert snapshot(data_dir) == before


def test_verify_names_each_mismatch_and_exits_1(data_dir):
    (data_dir / "raw" / "VIX.OHLCV.daily.csv.gz").write_bytes(b"tampered")
    path = data_dir / "processed" / "GSPC.dataset.c" / "v1" / "data.parquet"
    frame = pd.read_parquet(path)
    frame.iloc[0, 0] = 0.0
    frame.to_parquet(path)
    result = run("data", "verify", "--data-dir", str(data_dir))
    assert result.returncode == 1
    mismatches = [line for line in result.stdout.splitlines() if line.startswith("MISMATCH")]
    assert len(mismatches) == 2
    assert "VIX.OHLCV.daily v1" in mismatches[0] and "GSPC.dataset.c v1" in mismatches[1]


def test_build_writes_a_new_version_and_import_registers_a_csv(data_dir, tmp_path):
    csv = write_csv(synthetic_ohlcv(700, seed=4).rename(columns=str.lower), tmp_path / "spy.csv")
    imported = run("data", "import", "--csv", str(csv), "--ticker", "SPY", "--data-dir", str(data_dir))
    assert imported.returncode == 0 and "SPY.OHLCV.daily v1" in imported.stdout
    built = run("data", "build", "--ticker", "SPY", "--tier", "a25", "--data-dir", str(data_dir))
    assert built.returncode == 0 and "built SPY.dataset.a25 v1" in built.stdout and "199 warm-up rows" in built.stdout
    assert (data_dir / "processed" / "SPY.dataset.a25" / "v1" / "data.parquet").exists()
    assert run("data", "verify", "--data-dir", str(data_dir)).returncode == 0


def _bad_csv(kind: str, tmp_path: Path) -> Path:
    frame = synthetic_ohlcv(400)
    path = tmp_path / f"{kind}.csv"
    if kind == "corrupt":
        path.write_bytes(b"\x00\x01\x02 not a csv \xff\xfe")
        return path
    if kind == "nan":
        frame.iloc[30, 3] = float("nan")
    elif kind == "high_below_low":
        frame.iloc[30, 1] = frame.iloc[30, 2] / 2
    elif kind == "duplicate":
        frame = pd.concat([frame.iloc[:31], frame.iloc[30:]])
    elif kind == "unsorted":
        frame = frame.iloc[::-1]
    elif kind == "missing":
        frame = frame.drop(columns=["Close"])
    return write_csv(frame, path)


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("corrupt", "unreadable or corrupt"),
        ("nan", "NaN or inf in OHLC"),
        ("high_below_low", "High < Low"),
        ("duplicate", "duplicate date"),
        ("unsorted", "not sorted"),
        ("missing", "missing column(s) Close"),
    ],
)
def test_bad_csv_import_is_one_line_exit_2_and_writes_nothing(data_dir, tmp_path, kind, fragment):
    before = snapshot(data_dir)
    result = run(
        "data", "import", "--csv", str(_bad_csv(kind, tmp_path)), "--ticker", "SPY", "--data-dir", str(data_dir)
    )
    assert_user_error(result, fragment)
    assert snapshot(data_dir) == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["build", "--ticker", "NOPE"], "unknown raw dataset NOPE.OHLCV.daily"),
        (["build", "--tier", "zz"], "invalid choice: 'zz'"),
        (["build", "--version", "0"], "version must be ≥ 1"),
        (["import", "--csv", "/no/such/file.csv", "--ticker", "X"], "file not found"),
    ],
)
def test_impossible_commands_are_one_line_exit_2(data_dir, args, fragment):
    before = snapshot(data_dir)
    assert_user_error(run("data", *args, "--data-dir", str(data_dir)), fragment)
    assert snapshot(data_dir) == before


def test_unknown_commands_are_one_line_exit_2():
    assert_user_error(run("data", "frobnicate"), "invalid choice: 'frobnicate'")
    result = run("frobnicate")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_changed_content_under_an_existing_version_is_refused(data_dir, tmp_path):
    run("data", "import", "--csv", str(write_csv(synthetic_ohlcv(500), tmp_path / "g.csv")), "--ticker", "GSPC",
        "--data-dir", str(data_dir))  # fmt: skip
    before = snapshot(data_dir)
    result = run("data", "build", "--ticker", "GSPC", "--tier", "c", "--version", "1", "--data-dir", str(data_dir))
    assert_user_error(result, "use --version 2")
    assert snapshot(data_dir) == before


def test_tampered_dataset_is_refused_by_build_of_a_dependent_tier(data_dir):
    (data_dir / "raw" / "GSPC.OHLCV.daily.csv.gz").write_bytes(b"\x1f\x8b broken")
    result = run("data", "build", "--tier", "c", "--version", "1", "--data-dir", str(data_dir))
    assert_user_error(result, "hash mismatch for GSPC.OHLCV.daily v1")


FAKE_YFINANCE = """
import pandas as pd, numpy as np
MODE = "{mode}"
class Ticker:
    def __init__(self, symbol):
        self.symbol = symbol
    def history(self, **kwargs):
        if MODE == "offline" or (MODE == "second-fails" and self.symbol != "SPY"):
            raise ConnectionError("Failed to resolve 'query2.finance.yahoo.com'")
        n = 5000
        dates = pd.bdate_range("1999-01-04", periods=n, tz="America/New_York", name="Date")
        rng = np.random.default_rng(len(self.symbol))
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
        return pd.DataFrame({{"Open": close, "High": close * 1.01, "Low": close * 0.99, "Close": close,
                              "Adj Close": close, "Volume": rng.uniform(1e6, 2e6, n), "Dividends": 0.0}},
                            index=dates)
"""


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_download_through_yfinance(data_dir, tmp_path, mode):
    (tmp_path / "yfinance.py").write_text(FAKE_YFINANCE.format(mode=mode))  # stands in for the network only
    before = snapshot(data_dir)
    result = run("data", "download", "--ticker", "SPY", "--data-dir", str(data_dir), env={"PYTHONPATH": str(tmp_path)})
    if mode == "offline":
        assert_user_error(result, "download of SPY failed (ConnectionError")
        assert snapshot(data_dir) == before
    else:
        assert result.returncode == 0, result.stderr
        assert "SPY.OHLCV.daily v1: 5000 rows 1999-01-04" in result.stdout


def test_several_downloads_are_registered_together_and_pool_with_the_shipped_data(data_dir, tmp_path):
    (tmp_path / "yfinance.py").write_text(FAKE_YFINANCE.format(mode="online"))
    env = {"PYTHONPATH": str(tmp_path)}
    result = run("data", "download", "--tickers", "SPY,^DJI", "--data-dir", str(data_dir), env=env)
    assert result.returncode == 0, result.stderr
    assert "SPY.OHLCV.daily v1" in result.stdout and "DJI.OHLCV.daily v1" in result.stdout
    for ticker in ("SPY", "DJI"):
        assert run("data", "build", "--ticker", ticker, "--data-dir", str(data_dir)).returncode == 0

    from datamodules.market_datamodule import MarketDataModule

    dm = MarketDataModule(tickers=["GSPC", "SPY", "DJI"], data_dir=str(data_dir))
    dm.setup("fit")
    assert set(dm.stats["val"]["assets"]) == {"GSPC", "SPY", "DJI"}


def test_a_failed_download_among_several_writes_nothing(data_dir, tmp_path):
    (tmp_path / "yfinance.py").write_text(FAKE_YFINANCE.format(mode="second-fails"))
    before = snapshot(data_dir)
    result = run("data", "download", "--tickers", "SPY,QQQ", "--data-dir", str(data_dir),
                 env={"PYTHONPATH": str(tmp_path)})  # fmt: skip
    assert_user_error(result, "download of QQQ failed (ConnectionError")
    assert snapshot(data_dir) == before


def test_several_files_are_imported_together_or_not_at_all(data_dir, tmp_path):
    good = [write_csv(synthetic_ohlcv(400, seed=s), tmp_path / f"{s}.csv") for s in (1, 2)]
    result = run("data", "import", "--csv", *map(str, good), "--tickers", "AAA,BBB", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    assert "AAA.OHLCV.daily v1" in result.stdout and "BBB.OHLCV.daily v1" in result.stdout
    before = snapshot(data_dir)
    bad = tmp_path / "bad.csv"
    bad.write_text("Date,Open,High,Low,Close,Volume\n2020-01-02,abc,2,0.5,1.5,10\n")
    fresh = write_csv(synthetic_ohlcv(400, seed=3), tmp_path / "3.csv")
    result = run("data", "import", "--csv", str(fresh), str(bad), "--tickers", "CCC,DDD", "--data-dir", str(data_dir))
    assert_user_error(result, "non-numeric")
    assert snapshot(data_dir) == before
    result = run("data", "import", "--csv", str(fresh), "--tickers", "CCC,DDD", "--data-dir", str(data_dir))
    assert_user_error(result, "1 file(s) but 2 ticker(s)")
    assert snapshot(data_dir) == before


def test_download_without_yfinance_is_one_line_exit_2(data_dir, tmp_path):
    # make yfinance unimportable even where a developer has the optional extra installed
    (tmp_path / "yfinance").mkdir()
    (tmp_path / "yfinance" / "__init__.py").write_text("raise ImportError('No module named yfinance')\n")
    result = run("data", "download", "--ticker", "SPY", "--data-dir", str(data_dir), env={"PYTHONPATH": str(tmp_path)})
    assert_user_error(result, "needs yfinance")
