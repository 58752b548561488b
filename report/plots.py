"""Figures: each metric against parameters (log x) per horizon, with intervals, baselines and the power-law
fit; every HPO study's trials (parameters against objective, complete and pruned). Saved as PNG and as
TensorBoard images."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import EngFormatter, LogFormatter  # noqa: E402

from report.data_size import DataSizeStudy  # noqa: E402
from report.evaluate import Section  # noqa: E402

PANEL = (4.0, 3.0)  # inches per panel
DPI = 100  # → 400 × 300 pixels per panel
PLOTTED = (("bce", "BCE (lower is better)"), ("auroc", "AUROC"))
BASELINE_STYLE = {"base rate": ":", "logistic": "--", "gbt": "-."}
STUDY_COLUMNS = 3


def pixel_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure of rows × columns panels."""
    return round(columns * PANEL[0] * DPI), round(rows * PANEL[1] * DPI)


class EngLogFormatter(LogFormatter):
    """Log-axis labels in engineering notation (30k, 1M, 10M, 2G). LogFormatter decides which ticks get one: every
    decade, and on an axis spanning few decades some or all of the ticks in between (an HPO study's trials
    often lie within one decade, which has no decade tick to label)."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return EngFormatter(sep="")(x)


def _log_x(ax, label: str = "parameters") -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(EngLogFormatter())
    ax.xaxis.set_minor_formatter(EngLogFormatter(labelOnlyBase=False))
    ax.set_xlabel(label)


def _figure(rows: int, columns: int) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(rows, columns, figsize=(columns * PANEL[0], rows * PANEL[1]), dpi=DPI, squeeze=False)
    return fig, axes


def scaling_figure(section: Section, split: str) -> Figure | None:
    """Rows: BCE and AUROC; columns: horizons. Points: each budget's selected run; lines: baselines."""
    horizons = sorted({r.horizon for r in section.rows if r.kind == "model" and split in r.scores})
    if not horizons:
        return None
    fig, axes = _figure(len(PLOTTED), len(horizons))
    for col, horizon in enumerate(horizons):
        rows = [r for r in section.rows if r.horizon == horizon and split in r.scores]
        models = [r for r in rows if r.kind == "model"]
        n = np.array([r.n_params for r in models], dtype=float)
        for row_index, (metric, label) in enumerate(PLOTTED):
            ax = axes[row_index, col]
            e = [r.scores[split].metrics[metric] for r in models]
            value = np.array([x.value for x in e])
            err = np.array([[x.value - x.low, x.high - x.value] if math.isfinite(x.low) else [0, 0] for x in e]).T
            ax.errorbar(n, value, yerr=err, fmt="o-", capsize=3, color="C0", label="model (best run)")
            for r in models:
                ax.annotate(r.model, (r.n_params, r.scores[split].metrics[metric].value), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)  # fmt: skip
            for r in (r for r in rows if r.kind == "baseline"):
                style = BASELINE_STYLE.get(r.model, "--")
                ax.axhline(r.scores[split].metrics[metric].value, color="gray", linestyle=style, lw=1, label=r.model)
            fit = section.fits.get(horizon)
            if metric == "bce" and split == "val" and fit is not None and fit.law is not None:
                grid = np.geomspace(n.min() / 2, n.max() * 2, 100)
                ax.plot(grid, fit.law(grid), color="C1", linewidth=1, label=f"fit α={fit.law.alpha:.2f}")
            _log_x(ax)
            ax.set_ylabel(f"{split} {label}")
            ax.set_title(f"h = {horizon}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def trials_figure(studies: dict[str, pd.DataFrame]) -> Figure | None:
    """One panel per study: each trial's parameters against its best validation loss; complete vs pruned."""
    usable = {k: v for k, v in sorted(studies.items()) if {"n_params", "val_loss", "state"} <= set(v.columns)}
    if not usable:
        return None
    columns = min(STUDY_COLUMNS, len(usable))
    fig, axes = _figure(math.ceil(len(usable) / columns), columns)
    for ax in axes.flat[len(usable) :]:
        ax.set_visible(False)
    for ax, (name, trials) in zip(axes.flat, usable.items(), strict=False):
        numbers = [c for c in ("n_params", "val_loss", "val_prior_bce") if c in trials]
        trials = trials.assign(**{c: pd.to_numeric(trials[c], errors="coerce") for c in numbers})  # hand-edited
        for state, face, edge in (("complete", "C0", "C0"), ("pruned", "none", "C3")):
            part = trials[(trials["state"] == state) & trials["val_loss"].notna()]
            ax.scatter(part["n_params"], part["val_loss"], s=18, facecolors=face, edgecolors=edge,
                       label=f"{state} ({len(part)})")  # fmt: skip
        complete = trials[trials["state"] == "complete"].dropna(subset=["val_loss"])
        if len(complete):
            best = complete.loc[complete["val_loss"].idxmin()]
            ax.scatter([best["n_params"]], [best["val_loss"]], marker="*", s=120, color="C2", label="best", zorder=3)
        if "val_prior_bce" in trials and trials["val_prior_bce"].notna().any():
            ax.axhline(float(trials["val_prior_bce"].dropna().iloc[0]), color="gray", linestyle=":", label="prior BCE")
        _log_x(ax)
        ax.set_ylabel("best val BCE")
        ax.set_title(name, fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def data_size_figure(studies: list[DataSizeStudy]) -> Figure:
    """One panel per data-size study (settings × horizon): val BCE against training windows, a line per budget,
    and the joint law's curves where it was identified."""
    fig, axes = _figure(1, len(studies))
    for ax, study in zip(axes.flat, studies, strict=True):
        for i, budget in enumerate(dict.fromkeys(c.budget for c in study.cells)):
            own = [c for c in study.cells if c.budget == budget]
            e = [c.row.scores["val"].metrics["bce"] for c in own]
            d = np.array([c.n_data for c in own], dtype=float)
            err = np.array([[x.value - x.low, x.high - x.value] if math.isfinite(x.low) else [0, 0] for x in e]).T
            ax.errorbar(d, [x.value for x in e], yerr=err, fmt="o-", capsize=3, color=f"C{i}", label=budget)
            fit = study.fit
            if fit is not None and fit.law is not None and not fit.unidentified:
                grid = np.geomspace(d.min() / 1.5, d.max() * 1.5, 50)
                ax.plot(grid, fit.law(np.full_like(grid, own[0].n_params), grid), color=f"C{i}", lw=1, ls="--")
        _log_x(ax, "training windows (D)")
        ax.set_ylabel("val BCE (lower is better)")
        ax.set_title(f"h = {study.horizon}: {study.title[:60]}", fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def figures(
    sections: list[Section], studies: dict[str, pd.DataFrame], data_sizes: list[DataSizeStudy] = ()
) -> dict[str, Figure]:
    """File stem → figure."""
    found: dict[str, Figure] = {}
    if data_sizes:
        found["data_size_val"] = data_size_figure(list(data_sizes))
    for i, section in enumerate(sections):
        suffix = "" if i == 0 else f"_{i + 1}"
        for split in ("val", "test"):
            fig = scaling_figure(section, split)
            if fig is not None:
                found[f"scaling_{split}{suffix}"] = fig
    fig = trials_figure(studies)
    if fig is not None:
        found["hpo_trials"] = fig
    return found


def save(figs: dict[str, Figure], folder: Path, tensorboard: Path) -> list[str]:
    """PNG files in folder and one TensorBoard image per figure (tag report/<stem>); returns the file names."""
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True, exist_ok=True)
    for old in tensorboard.glob("events.out.tfevents.*") if tensorboard.is_dir() else ():
        old.unlink()  # the report's images are replaced, not stacked
    names = []
    writer = SummaryWriter(str(tensorboard))
    try:
        for stem, fig in figs.items():
            fig.savefig(folder / f"{stem}.png", dpi=DPI)
            names.append(f"{stem}.png")
            writer.add_figure(f"report/{stem}", fig, global_step=0, close=True)
    finally:
        writer.close()
    return names
