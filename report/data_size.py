"""The data-size axis: report sections that differ only in the first training date (`data.splits.train_start`)
share their validation samples, so each budget's validation BCE can be followed as its training data D grows (D:
the training windows of the run), and with three or more values of both N and D the joint law
L(N, D) = E + A·N^(−α) + B·D^(−β) (Hoffmann et al. 2022) is fitted, with paired bootstrap intervals."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from report.evaluate import Options, Row, Section, frame_title, paired_resamples
from report.findings import paired, verdict
from report.scaling import JointFit, fit_joint


@dataclass
class Cell:
    """One selected configuration on the data-size axis."""

    budget: str
    n_params: int
    n_data: int  # training windows
    row: Row


@dataclass
class DataSizeStudy:
    """One set of data settings (all but the first training date), one horizon, one scope."""

    title: str
    horizon: int
    cells: list[Cell]
    arm: str = "hybrid"
    fit: JointFit | None = None
    findings: list[str] = field(default_factory=list)


def training_windows(row: Row) -> int | None:
    """D of a model row: the training windows its selected run trained on (from run.json)."""
    n = ((row.run.record.get("splits") or {}).get("train") or {}).get("n") if row.run else None
    return int(n) if n else None


def _axis_key(section: Section) -> str:
    settings = json.loads(json.dumps(section.settings, default=str))
    settings["splits"] = {k: v for k, v in settings["splits"].items() if k != "train_start"}
    settings.pop("data_dir", None)
    return json.dumps([settings, section.scope, section.arm], sort_keys=True)


def data_size_studies(sections: list[Section], options: Options) -> list[DataSizeStudy]:
    """Every group of sections with at least two first training dates, per horizon."""
    groups: dict[str, list[Section]] = {}
    arms = {s.arm for s in sections}  # named in the titles when the report holds several
    for section in sections:
        groups.setdefault(_axis_key(section), []).append(section)
    studies = []
    for group in groups.values():
        if len({s.settings["splits"].get("train_start") for s in group}) < 2:
            continue
        settings = group[0].settings | {"splits": {**group[0].settings["splits"], "train_start": None}}
        title = frame_title(settings, group[0].scope) + (f" · {group[0].arm}" if len(arms) > 1 else "")
        for horizon in sorted({r.horizon for s in group for r in s.rows}):
            rows = [r for s in group for r in s.rows if r.kind == "model" and r.horizon == horizon]
            cells = [Cell(r.model, r.n_params, training_windows(r), r) for r in rows
                     if "val" in r.scores and training_windows(r)]  # fmt: skip
            if len({c.n_data for c in cells}) >= 2:  # a horizon run at one data size only is no data-size axis
                cells.sort(key=lambda c: (c.n_params, c.n_data))
                study = DataSizeStudy(title, horizon, cells, group[0].arm)
                study.findings = _budget_lines(study, options) + _joint_lines(study, options)
                studies.append(study)
    return studies


def _budget_lines(study: DataSizeStudy, options: Options) -> list[str]:
    """Each budget's val BCE at its smallest and largest D, and the paired difference (largest − smallest)."""
    lines = []
    for budget in dict.fromkeys(c.budget for c in study.cells):
        own = [c for c in study.cells if c.budget == budget]
        if len({c.n_data for c in own}) < 2:
            continue
        small, large = own[0], own[-1]
        text = " → ".join(f"{c.row.scores['val'].metrics['bce'].value:.4f} (D = {c.n_data:,})" for c in own)
        d = paired(large.row.scores["val"], small.row.scores["val"], "bce", options)
        said = verdict(d, f"D = {large.n_data:,}", f"D = {small.n_data:,}", options.margin) if d else ""
        compared = f"; largest − smallest D: {d.text(4, sign=True)}: {said}" if d else ""
        lines.append(f"{budget}: val BCE {text}{compared}")
    return lines


def _joint_lines(study: DataSizeStudy, options: Options) -> list[str]:
    with_samples = [c for c in study.cells if c.row.scores["val"].samples is not None]
    if len(with_samples) < 2:
        return ["L(N, D): needs validation predictions of several cells"]
    common = with_samples[0].row.scores["val"].samples.index
    for cell in with_samples[1:]:
        common = common.intersection(cell.row.scores["val"].samples.index)
    probs = [c.row.scores["val"].probs(common) for c in with_samples]  # per cell (S, n)
    y = with_samples[0].row.scores["val"].samples.loc[common, "label"].to_numpy(float)
    idx = paired_resamples(common, options)
    n, d = np.array([c.n_params for c in with_samples]), np.array([c.n_data for c in with_samples])
    study.fit = fit = fit_joint(n, d, probs, y, idx)
    head = f"L(N, D) = E + A·N^(−α) + B·D^(−β) over {fit.k} cells, {fit.n} common days"
    if fit.law is None:
        return [f"{head}: not identified ({fit.unidentified})"]
    law = fit.law
    shares = (f"; the loss falls with N in {fit.falling_n_share:.0%} and with D in {fit.falling_d_share:.0%} "
              "of resamples") if fit.alpha.has_interval else ""  # fmt: skip
    values = f"α = {fit.alpha.text(3)}, β = {fit.beta.text(3)}, E = {law.E:.4f}, A = {law.A:.3g}, B = {law.B:.3g}"
    if fit.unidentified:
        return [f"{head}: not identified ({fit.unidentified}); {values}{shares}"]
    return [f"{head}: {values}{shares}"]
