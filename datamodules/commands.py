"""The `cli.py data …` commands: each a plain function that prints and returns an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.errors import DataError
from datamodules.features import TIERS, needs_vix
from datamodules.manifest import PROCESSED, RAW, Entry, Manifest, strays
from datamodules.processed import build_dataset, verify_all, warmup_rows
from datamodules.sources import download, import_many

console = Console(width=None if sys.stdout.isatty() else 160)  # piped output: do not squeeze tables to 80


@contextmanager
def user_errors(data_dir: Path) -> Iterator[None]:
    """Run a data command: a `--data_dir` that is not a folder, or a file the system cannot read or write, is a
    one-line DataError like any other bad input (never a traceback)."""
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise DataError(f"--data_dir {data_dir} is not a folder")
    try:
        yield
    except OSError as err:
        raise DataError(f"{err.filename or data_dir}: {err.strerror or type(err).__name__}") from None


def _describe(entry: Entry) -> str:
    return (
        f"{entry.label}: {entry.rows} rows {entry.first_date} → {entry.last_date}, "
        f"{len(entry.columns)} columns, {entry.hash[:19]}…"
    )


def build(ticker: str, tier: str, version: int | None, data_dir: Path) -> int:
    result = build_dataset(ticker, tier, version, data_dir)
    entry, notes = result.entry, result.entry.notes
    if not result.written:
        console.print(f"{entry.label} is up to date (identical content; nothing written)")
        return 0
    console.print(f"built {_describe(entry)}")
    console.print(
        f"  dropped {notes['warmup_rows_dropped']} warm-up rows and {notes['tail_rows_dropped']} trailing rows"
        + (f"; VIX carried forward on {notes['vix_filled_days']} days" if "vix_filled_days" in notes else "")
    )
    if result.adopted:
        console.print(f"  registered {Path(data_dir) / entry.path} as it was: an interrupted build left it behind")
    else:
        console.print(f"  wrote {Path(data_dir) / entry.path}")
    return 0


def verify(data_dir: Path) -> int:
    """Exit 1 when a registered file does not match its entry. Strays (files no entry names, temporaries a killed
    writer left) are listed with how to remove them but do not fail: nothing reads them, as `git fsck` lists
    dangling objects and still succeeds."""
    problems = verify_all(data_dir)
    count = sum(len(Manifest(data_dir, kind).entries) for kind in (RAW, PROCESSED))
    for line in problems:
        console.print(f"[red]MISMATCH[/red] {line}", highlight=False)
    found = strays(data_dir)
    for path, why in found:
        console.print(f"[yellow]STRAY[/yellow] {path}: {why}", highlight=False, soft_wrap=True)
    if found:
        console.print(f"{len(found)} stray file(s): in no manifest, never read; remove them as shown")
    if problems:
        console.print(f"{len(problems)} of {count} entries do not match")
        return 1
    console.print(f"all {count} entries match their manifests")
    return 0


def _repairs(entry: Entry) -> str:
    notes = entry.notes
    text = f"repaired {notes['repaired_rows']} High/Low rows, filled {notes.get('volume_filled_rows', 0)} zero volumes"
    allowed = notes.get("implausible_allowed", {})
    return text + "".join(f"; allowed implausible {rule}: {line}" for rule, line in allowed.items())


def import_files(files: list[tuple[Path, str]], data_dir: Path, no_volume: bool, allow_implausible: bool) -> int:
    for entry in import_many(files, data_dir, require_volume=not no_volume, allow_implausible=allow_implausible):
        console.print(f"registered {_describe(entry)}; {_repairs(entry)}")
    return 0


def download_tickers(
    tickers: list[str],
    symbols: list[str] | None,
    data_dir: Path,
    no_volume: bool = False,
    allow_implausible: bool = False,
) -> int:
    for entry in download(tickers, data_dir, symbols, not no_volume, allow_implausible):
        console.print(f"downloaded and registered {_describe(entry)}; {_repairs(entry)}")
    return 0


def list_datasets(data_dir: Path, budgets: dict[str, Callable[[int], int]] | None = None) -> int:
    """The registered datasets, then the tiers; budgets (name → parameter count of its shipped shape on C
    channels) add what each tier's channels do to every budget."""
    table = Table(title=f"datasets in {data_dir}")
    for column in ("kind", "name", "version", "tier", "rows", "first", "last", "columns", "sha256", "created"):
        table.add_column(column)
    for kind in (RAW, PROCESSED):
        for e in Manifest(data_dir, kind).entries:
            table.add_row(
                kind,
                e.name,
                str(e.version),
                e.tier,
                str(e.rows),
                e.first_date,
                e.last_date,
                str(len(e.columns)),
                e.hash[7:19],
                e.created[:19],
            )
    console.print(table)
    console.print(_tiers_table(data_dir, budgets or {}))
    return 0


def _tiers_table(data_dir: Path, budgets: dict[str, Callable[[int], int]], ticker: str = "GSPC") -> Table:
    """Each tier's channel count, whether it needs the VIX series, and the warm-up rows it drops on `ticker`."""
    try:
        warmup = {tier: str(rows) for tier, rows in warmup_rows(ticker, data_dir).items()}
    except DataError:  # no intact raw series of the ticker to measure on
        warmup = {}
    table = Table(title="tiers")
    for column in ("tier", "channels", "VIX", f"warm-up rows ({ticker})", *(f"{b} params" for b in budgets)):
        table.add_column(column)
    for tier, columns in TIERS.items():
        counts = [f"{count(len(columns)):,}" for count in budgets.values()]
        table.add_row(tier, str(len(columns)), "yes" if needs_vix(tier) else "no", warmup.get(tier, "–"), *counts)
    return table
