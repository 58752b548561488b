"""Where a study's time went: per budget and arm, from the study's state (each job's wall seconds, as the runner
timed it from launch to exit) and each run's record (when its fit started and finished, its epochs).

    python bench/study_times.py [--study logs/study/answer]

start-up = wall − (finished − started): interpreter and imports, config parsing, data set-up, the logistic start
and the batch finder, before the run record's clock starts; the rest is epochs (training, validation, checkpoints,
predictions). Printed as a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=ROOT / "logs" / "study" / "answer")
    args = parser.parse_args()
    state = json.loads((args.study / "study.json").read_text())["runs"]
    rows: dict[str, list[dict]] = defaultdict(list)
    for key, entry in state.items():
        experiment, horizon, tickers, tier, start, seed = key.split("/")
        data = "+".join(tickers.split("+")) + f".dataset.{tier}-v1" + ("" if start == "all" else f"-from{start}")
        record_path = args.study / "runs" / experiment / f"{horizon}-{data}-{seed}" / "run.json"
        if "fit_s" not in entry or not record_path.is_file():
            continue
        record = json.loads(record_path.read_text())
        began, ended = (datetime.fromisoformat(record[k]) for k in ("started", "finished"))
        inside = (ended - began).total_seconds()
        rows[experiment].append({"wall": entry["fit_s"], "inside": inside, "epochs": record["epochs_run"],
                                 "threads": entry.get("fit_threads"), "test": entry.get("test_s")})  # fmt: skip
    print("| budget-arm | fits | threads | wall s (mean) | start-up s | epochs | s per epoch | test s | wall total |")
    print("|---|---|---|---|---|---|---|---|---|")
    total = tests = 0.0
    for experiment, runs in rows.items():
        wall, inside = mean(r["wall"] for r in runs), mean(r["inside"] for r in runs)
        epochs = mean(r["epochs"] for r in runs)
        test = [r["test"] for r in runs if r["test"]]
        own = sum(r["wall"] for r in runs)
        total, tests = total + own, tests + sum(test)
        test_s = f"{mean(test):.1f}" if test else "—"
        threads = sorted({r["threads"] for r in runs})
        print(f"| {experiment} | {len(runs)} | {threads} | {wall:.1f} | {wall - inside:.1f} | {epochs:.1f} | "
              f"{inside / epochs:.1f} | {test_s} | {own / 60:.1f} min |")  # fmt: skip
    print(f"\nfit jobs: {total / 60:.1f} min of job time; test jobs: {tests / 60:.1f} min (jobs overlap when run two "
          "at a time: the study's wall time is less)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
