"""`cli.py data …`: exit codes, one-line errors, nothing written on bad input. In-process through `cli.main`
(`cli_ok`, `assert_refused`), except `data verify` in a real subprocess (a refusal in a real subprocess:
tests/test_bad_input_data.py)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, assert_refused, cli_ok, run_cli, synthetic_ohlcv, write_csv

from common.config_files import fit_config


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(args: list[str], fragment: str, capsys, data_dir: Path) -> None:
    """`cli.py data ARGS --data-dir DATA_DIR` in this process: exit 2 with one error line, nothing under data_dir
    created, changed (not a byte) or removed."""
    before = contents(data_dir)
    assert_refused(["data", *args, "--data-dir", str(data_dir)], fragment, capsys, data_dir)
    assert contents(data_dir) == before


def test_list_and_a_no_op_build_on_the_shipped_data(data_dir):
    listed = cli_ok("data", "list", "--data-dir", data_dir)
    for name in ("GSPC.OHLCV.daily", "IXIC.OHLCV.daily", "VIX.OHLCV.daily", "GSPC.dataset.a25", "IXIC.dataset.a25"):
        assert name in listed

    from lightning_modules.patchtst import PatchTSTConfig
    from sizing.accounting import parameter_count

    two_billion = PatchTSTConfig(**fit_config(ROOT / "configs" / "2B.yaml")["model"]["net"])
    row = next(line for line in listed.splitlines() if line.startswith("│ a200+c "))
    assert "208" in row and "yes" in row and f"{parameter_count(208, 80, two_billion):,}" in row  # a tier × budget
    before = contents(data_dir)
    built = cli_ok("data", "build", "--ticker", "GSPC", "--tier", "a25", "--version", "1", "--data-dir", data_dir)
    assert "up to date" in built
    assert contents(data_dir) == before


def test_list_in_a_real_process_shows_the_budgets_sizes(data_dir):
    """`data list`'s budget sizes come from each budget config (over configs/base.yaml) and the meta-device count."""
    done = run_cli("data", "list", "--data-dir", str(data_dir))
    assert done.returncode == 0 and not done.stderr, done.stderr[-2000:]
    assert "2M params" in done.stdout and "GSPC.dataset.a25" in done.stdout


def test_verify_of_the_shipped_data_in_a_real_process(data_dir):
    verified = run_cli("data", "verify", "--data-dir", str(data_dir))
    assert verified.returncode == 0 and "all 9 entries match" in verified.stdout, verified.stderr[-2000:]


def test_verify_names_each_mismatch_and_exits_1(data_dir, capsys):
    import cli

    (data_dir / "raw" / "VIX.OHLCV.daily.csv.gz").write_bytes(b"tampered")
    path = data_dir / "processed" / "GSPC.dataset.c" / "v1" / "data.parquet"
    frame = pd.read_parquet(path)
    frame.iloc[0, 0] = 0.0
    frame.to_parquet(path)
    capsys.readouterr()
    assert cli.main(["data", "verify", "--data-dir", str(data_dir)]) == 1
    mismatches = [line for line in capsys.readouterr().out.splitlines() if line.startswith("MISMATCH")]
    assert len(mismatches) == 2
    assert "VIX.OHLCV.daily v1" in mismatches[0] and "GSPC.dataset.c v1" in mismatches[1]


def test_build_writes_a_new_version_and_import_registers_a_csv(data_dir, tmp_path):
    csv = write_csv(synthetic_ohlcv(700, seed=4).rename(columns=str.lower), tmp_path / "spy.csv")
    imported = cli_ok("data", "import", "--csv", csv, "--ticker", "SPY", "--data-dir", data_dir)
    assert "SPY.OHLCV.daily v1" in imported
    built = cli_ok("data", "build", "--ticker", "SPY", "--tier", "a25", "--data-dir", data_dir)
    assert "built SPY.dataset.a25 v1" in built and "199 warm-up rows" in built
    assert (data_dir / "processed" / "SPY.dataset.a25" / "v1" / "data.parquet").exists()
    assert "all 11 entries match" in cli_ok("data", "verify", "--data-dir", data_dir)


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
def test_bad_csv_import_is_one_line_exit_2_and_writes_nothing(data_dir, tmp_path, capsys, kind, fragment):
    refused(["import", "--csv", str(_bad_csv(kind, tmp_path)), "--ticker", "SPY"], fragment, capsys, data_dir)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["build", "--ticker", "NOPE"], "unknown raw dataset NOPE.OHLCV.daily"),
        (["build", "--tier", "zz"], "invalid choice: 'zz'"),
        (["build", "--version", "0"], "version must be ≥ 1"),
        (["import", "--csv", "/no/such/file.csv", "--ticker", "X"], "file not found"),
    ],
)
def test_impossible_commands_are_one_line_exit_2(data_dir, capsys, args, fragment):
    refused(args, fragment, capsys, data_dir)


def test_unknown_commands_are_one_line_exit_2(capsys):
    assert_refused(["data", "frobnicate"], "invalid choice: 'frobnicate'", capsys)
    assert_refused(["frobnicate"], "unknown command 'frobnicate'", capsys)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["data"], "error: cli.py data: the following arguments are required: command"),
        (["data", "import", "--csv", "x.csv"],
         "error: cli.py data import: the following arguments are required: --ticker/--tickers"),
        (["data", "build", "--version", "x"], "error: cli.py data build: argument --version: invalid int value: 'x'"),
        (["hpo"], "error: cli.py hpo: the following arguments are required: --trials"),
        (["report", "--bootstrap"], "error: cli.py report: argument --bootstrap: expected one argument"),
    ],
)  # fmt: skip
def test_usage_errors_are_worded_as_argparse_words_them(capsys, argv, line):
    """The commands parse with jsonargparse; their usage errors keep argparse's wording, named by subcommand."""
    assert assert_refused(argv, line, capsys) == line


def test_changed_content_under_an_existing_version_is_refused(data_dir, tmp_path, capsys):
    cli_ok("data", "import", "--csv", write_csv(synthetic_ohlcv(500), tmp_path / "g.csv"), "--ticker", "GSPC",
           "--data-dir", data_dir)  # fmt: skip
    refused(["build", "--ticker", "GSPC", "--tier", "c", "--version", "1"], "use --version 2", capsys, data_dir)


def test_tampered_dataset_is_refused_by_build_of_a_dependent_tier(data_dir, capsys):
    (data_dir / "raw" / "GSPC.OHLCV.daily.csv.gz").write_bytes(b"\x1f\x8b broken")
    refused(["build", "--tier", "c", "--version", "1"], "hash mismatch for GSPC.OHLCV.daily v1", capsys, data_dir)


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


@pytest.fixture
def fake_yfinance(monkeypatch):
    """Install a stand-in for the network only: `fake_yfinance(mode)` is what `import yfinance` finds."""

    def install(mode: str) -> None:
        module = types.ModuleType("yfinance")
        exec(FAKE_YFINANCE.format(mode=mode), module.__dict__)
        monkeypatch.setitem(sys.modules, "yfinance", module)

    return install


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_download_through_yfinance(data_dir, capsys, fake_yfinance, mode):
    fake_yfinance(mode)
    if mode == "offline":
        refused(["download", "--ticker", "SPY"], "download of SPY failed (ConnectionError", capsys, data_dir)
    else:
        out = cli_ok("data", "download", "--ticker", "SPY", "--data-dir", data_dir)
        assert "SPY.OHLCV.daily v1: 5000 rows 1999-01-04" in out


def test_several_downloads_are_registered_together_and_pool_with_the_shipped_data(data_dir, fake_yfinance):
    fake_yfinance("online")
    out = cli_ok("data", "download", "--tickers", "SPY,^DJI", "--data-dir", data_dir)
    assert "SPY.OHLCV.daily v1" in out and "DJI.OHLCV.daily v1" in out
    for ticker in ("SPY", "DJI"):
        cli_ok("data", "build", "--ticker", ticker, "--data-dir", data_dir)

    from datamodules.market_datamodule import MarketDataModule

    dm = MarketDataModule(tickers=["GSPC", "SPY", "DJI"], data_dir=str(data_dir))
    dm.setup("fit")
    assert set(dm.stats["val"]["assets"]) == {"GSPC", "SPY", "DJI"}


def test_a_failed_download_among_several_writes_nothing(data_dir, capsys, fake_yfinance):
    fake_yfinance("second-fails")
    refused(["download", "--tickers", "SPY,QQQ"], "download of QQQ failed (ConnectionError", capsys, data_dir)


def test_several_files_are_imported_together_or_not_at_all(data_dir, tmp_path, capsys):
    good = [write_csv(synthetic_ohlcv(400, seed=s), tmp_path / f"{s}.csv") for s in (1, 2)]
    out = cli_ok("data", "import", "--csv", *good, "--tickers", "AAA,BBB", "--data-dir", data_dir)
    assert "AAA.OHLCV.daily v1" in out and "BBB.OHLCV.daily v1" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("Date,Open,High,Low,Close,Volume\n2020-01-02,abc,2,0.5,1.5,10\n")
    fresh = write_csv(synthetic_ohlcv(400, seed=3), tmp_path / "3.csv")
    refused(["import", "--csv", str(fresh), str(bad), "--tickers", "CCC,DDD"], "non-numeric", capsys, data_dir)
    refused(["import", "--csv", str(fresh), "--tickers", "CCC,DDD"], "1 file(s) but 2 ticker(s)", capsys, data_dir)


def test_download_without_yfinance_is_one_line_exit_2(data_dir, capsys, monkeypatch):
    # make yfinance unimportable even where a developer has the optional extra installed
    monkeypatch.setitem(sys.modules, "yfinance", None)  # `import yfinance` raises ImportError
    refused(["download", "--ticker", "SPY"], "needs yfinance", capsys, data_dir)


KILLED_BUILD = """
import os, signal, sys
import common.files, datamodules.manifest, datamodules.processed
def half_then_kill(path, data):  # the real temporary beside the target, half written, then SIGKILL
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, _ = common.files._new_file(path)
    os.write(fd, data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
def kill(*args):
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[1] == "writing":
    datamodules.processed.atomic_write_bytes = half_then_kill
else:  # the file is in place, the manifest not yet written
    datamodules.manifest.Manifest.register = kill
import cli
cli.main(["data", "build", "--ticker", "GSPC", "--tier", "a25", "--version", "2", "--data-dir", sys.argv[2]])
"""


def _kill_a_build(where: str, data_dir: Path) -> None:
    """`cli.py data build` in a real process, killed with SIGKILL while writing or before registering."""
    import subprocess

    killed = subprocess.run([sys.executable, "-c", KILLED_BUILD, where, str(data_dir)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]


@pytest.mark.parametrize("where", ["writing", "registering"])
def test_a_killed_build_blocks_nothing_and_verify_names_what_it_left(data_dir, capsys, where):
    import cli

    _kill_a_build(where, data_dir)
    version = data_dir / "processed" / "GSPC.dataset.a25" / "v2"
    left = [p.name for p in version.iterdir()]
    assert left == ["data.parquet"] if where == "registering" else len(left) == 1 and left[0].endswith(".tmp")
    capsys.readouterr()
    assert cli.main(["data", "verify", "--data-dir", str(data_dir)]) == 0  # strays are not corruption
    out = " ".join(capsys.readouterr().out.split())
    assert f"STRAY {version / left[0]}" in out and f"rm '{version / left[0]}'" in out and "all 9 entries match" in out
    built = " ".join(cli_ok("data", "build", "--ticker", "GSPC", "--tier", "a25", "--version", "2", "--data-dir",
                            data_dir).split())  # fmt: skip
    assert "GSPC.dataset.a25 v2" in built
    assert ("as it was: an interrupted build left it behind" in built) == (where == "registering")
    verified = " ".join(cli_ok("data", "verify", "--data-dir", data_dir).split())
    assert "all 10 entries match" in verified and ("STRAY" in verified) == (where == "writing")


def test_verify_lists_no_strays_on_the_shipped_data_and_names_unimported_raw_files(data_dir):
    assert "STRAY" not in cli_ok("data", "verify", "--data-dir", data_dir)
    (data_dir / "raw" / "SPY.OHLCV.daily.csv.gz").write_bytes(b"copied by hand")
    out = " ".join(cli_ok("data", "verify", "--data-dir", data_dir).split())
    assert f"STRAY {data_dir / 'raw' / 'SPY.OHLCV.daily.csv.gz'}: no manifest entry names it" in out
    assert "SOURCES.md" not in out
