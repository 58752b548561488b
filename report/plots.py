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


def _finish(ax, ylabel: str, title: str, fontsize: int = 9, xlabel: str = "parameters") -> None:
    """A panel's log x axis, labels, grid and legend."""
    _log_x(ax, xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=fontsize)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)


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
            _finish(ax, f"{split} {label}", f"h = {horizon}")
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
    """One panel per data-size study (settings × arm × horizon): val BCE against training windows, a line per budget
    (seed mean, ±1 seed sd shaded), and the joint law's curves (dashed; the caption says whether it is identified)."""
    fig, axes = _figure(1, len(studies))
    for ax, study in zip(axes.flat, studies, strict=True):
        for i, budget in enumerate(dict.fromkeys(c.budget for c in study.cells)):
            own = [c for c in study.cells if c.budget == budget]
            d = np.array([c.n_data for c in own], dtype=float)
            spread = np.array([c.row.scores["val"].spread.get("bce", np.nan) for c in own])
            _band(ax, d, [c.row.scores["val"].metrics["bce"] for c in own], spread, f"C{i}", budget)
            fit = study.fit
            if fit is not None and fit.law is not None:  # drawn also when unidentified: the caption says so
                grid = np.geomspace(d.min() / 1.5, d.max() * 1.5, 50)
                ax.plot(grid, fit.law(np.full_like(grid, own[0].n_params), grid), color=f"C{i}", lw=1, ls="--")
        if study.fit is not None and study.fit.law is not None:
            fit = study.fit
            said = "not identified" if fit.unidentified else f"α = {fit.alpha.text(2)}, β = {fit.beta.text(2)}"
            ax.text(0.02, 0.02, f"L(N, D) fit (dashed): {said}", transform=ax.transAxes, fontsize=6)
        _log_x(ax, "training windows (D)")
        ax.set_ylabel("val BCE (lower is better)")
        ax.set_title(f"{study.arm}, h = {study.horizon}: {study.title[:50]}", fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def _size_groups(sections: list[Section]) -> dict[tuple, list[Section]]:
    """Sections (pooled scope) that differ only in their first training date and arm, with ≥ 2 budgets: the lines
    of one answer figure. Key: the data settings without train_start."""
    groups: dict[tuple, list[Section]] = {}
    for section in (s for s in sections if not s.scope):
        settings = {**section.settings, "splits": {k: v for k, v in section.settings["splits"].items()
                                                   if k != "train_start"}}  # fmt: skip
        if len({r.n_params for r in section.rows if r.kind == "model"}) >= 2:
            groups.setdefault((repr(sorted(settings.items())),), []).append(section)
    return groups


def _band(ax, x: np.ndarray, e: list, spread: np.ndarray, color: str, label: str) -> None:
    """The seed-mean line with its seeds' ±1 standard deviation shaded."""
    value = np.array([v.value for v in e])
    ax.plot(x, value, "o-", color=color, label=label, ms=4)
    ok = np.isfinite(spread)
    if ok.any():
        ax.fill_between(x[ok], (value - spread)[ok], (value + spread)[ok], color=color, alpha=0.2, lw=0)


def answer_figure(group: list[Section], split: str, metric: str) -> Figure | None:
    """Rows: arms; columns: horizons. A line per amount of training data (first training date): the metric of each
    budget's configuration (seed mean, ±1 seed sd shaded) against parameters; the logistic and boosted-tree
    baselines of the full history as lines (on AUROC with their bootstrap intervals as bands); on validation BCE
    the fitted power law (dotted)."""
    arms = list(dict.fromkeys(s.arm for s in group))
    horizons = sorted({r.horizon for s in group for r in s.rows if r.kind == "model" and split in r.scores})
    if not horizons:
        return None
    label = dict(PLOTTED)[metric]
    fig, axes = _figure(len(arms), len(horizons))
    for row_index, arm in enumerate(arms):
        own = sorted((s for s in group if s.arm == arm), key=lambda s: s.settings["splits"].get("train_start") or "")
        for col, horizon in enumerate(horizons):
            ax = axes[row_index, col]
            for i, section in enumerate(own):
                models = sorted((r for r in section.rows if r.kind == "model" and r.horizon == horizon
                                 and split in r.scores), key=lambda r: r.n_params)  # fmt: skip
                if not models:
                    continue
                n = np.array([r.n_params for r in models], dtype=float)
                spread = np.array([r.scores[split].spread.get(metric, np.nan) for r in models])
                start = section.settings["splits"].get("train_start")
                d = models[0].run.record["splits"]["train"]["n"] if models[0].run else "?"
                _band(ax, n, [r.scores[split].metrics[metric] for r in models], spread, f"C{i}",
                      f"D = {d:,}" + (f" (from {start})" if start else " (all)"))  # fmt: skip
                fit = section.fits.get(horizon)
                if metric == "bce" and split == "val" and fit is not None and fit.law is not None:
                    grid = np.geomspace(n.min() / 1.3, n.max() * 1.3, 100)
                    ax.plot(grid, fit.law(grid), color=f"C{i}", lw=1, ls=":")
            full = next((s for s in own if not s.settings["splits"].get("train_start")), own[0])
            for r in (r for r in full.rows if r.kind == "baseline" and r.horizon == horizon and split in r.scores):
                if r.model == "base rate":  # far off (BCE ≈ 0.48 at h = 1; AUROC 0.5): it would flatten the rest
                    continue
                e = r.scores[split].metrics[metric]
                style = BASELINE_STYLE.get(r.model, "--")
                ax.axhline(e.value, color="gray", ls=style, lw=1, label=r.model)
                if metric == "auroc" and math.isfinite(e.low):  # on BCE the days' common noise would hide the lines
                    ax.axhspan(e.low, e.high, color="gray", alpha=0.08, lw=0)
            _finish(ax, f"{split} {label}", f"{arm}, h = {horizon}")
    fig.tight_layout()
    return fig


def _slice_label(section: Section) -> str:
    settings, start = section.settings, section.settings["splits"].get("train_start")
    label = f"{'+'.join(settings['tickers'])} {settings['tier']}"
    label += f" (+{settings['threshold']:.0%})" if settings["threshold"] != 0.01 else ""
    label += f" from {start}" if start else ""
    return label + (f" · {section.scope} only" if section.scope else "")


def slices_figure(sections: list[Section], split: str) -> Figure | None:
    """The slices: sections of one budget each (other tiers, pools, scopes), beside that budget's row of the
    other sections (the full history's). Rows BCE and AUROC, columns horizons; a point per section and arm (seed
    mean, its bootstrap interval), the section's best baseline (gbt or logistic) as a cross."""
    single = [s for s in sections if len({r.model for r in s.rows if r.kind == "model"}) == 1]
    budgets = {r.model for s in single for r in s.rows if r.kind == "model"}
    sections = [s for s in sections if any(r.model in budgets for r in s.rows if r.kind == "model")]
    horizons = sorted({r.horizon for s in single for r in s.rows if r.kind == "model" and split in r.scores})
    if not horizons:
        return None
    labels = list(dict.fromkeys(_slice_label(s) for s in sections))
    arms = list(dict.fromkeys(s.arm for s in sections))
    fig, axes = _figure(len(PLOTTED), len(horizons))
    for col, horizon in enumerate(horizons):
        for row_index, (metric, label) in enumerate(PLOTTED):
            ax = axes[row_index, col]
            for a, arm in enumerate(arms):
                for section in (s for s in sections if s.arm == arm):
                    x = labels.index(_slice_label(section)) + (a - (len(arms) - 1) / 2) * 0.15
                    rows = [r for r in section.rows if r.horizon == horizon and split in r.scores]
                    for r in (r for r in rows if r.kind == "model" and r.model in budgets):
                        e = r.scores[split].metrics[metric]
                        err = [[e.value - e.low], [e.high - e.value]] if math.isfinite(e.low) else None
                        ax.errorbar([x], [e.value], yerr=err, fmt="o", capsize=3, color=f"C{a}", ms=4)
                    bases = [r for r in rows if r.kind == "baseline" and r.model != "base rate"]
                    if bases and a == 0:
                        best = min(bases, key=lambda r: r.scores[split].metrics["bce"].value)
                        ax.plot([labels.index(_slice_label(section))], [best.scores[split].metrics[metric].value],
                                "x", color="gray", ms=6)  # fmt: skip
            for a, arm in enumerate(arms):
                ax.plot([], [], "o", color=f"C{a}", label=arm)
            ax.plot([], [], "x", color="gray", label="best baseline")
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=6)
            ax.set_ylabel(f"{split} {label}")
            ax.set_title(f"{', '.join(sorted(budgets))}, h = {horizon}", fontsize=9)
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def figures(
    sections: list[Section], studies: dict[str, pd.DataFrame], data_sizes: list[DataSizeStudy] = ()
) -> dict[str, Figure]:
    """File stem → figure."""
    found: dict[str, Figure] = {}
    groups = list(_size_groups(sections).values())
    for g, group in enumerate(groups):
        for split in ("val", "test"):
            for metric in ("bce", "auroc"):
                fig = answer_figure(group, split, metric)
                if fig is not None:
                    found[f"{'loss' if metric == 'bce' else metric}_vs_params_{split}{f'_{g + 1}' if g else ''}"] = fig
    if data_sizes:
        found["data_size_val"] = data_size_figure(list(data_sizes))
    covered = {id(s) for group in groups for s in group}
    rest = [s for s in sections if id(s) not in covered]  # one budget each (the slices), or one asset's scope
    for split in ("val", "test"):
        full = [s for group in groups for s in group if not s.settings["splits"].get("train_start")]
        fig = slices_figure(full + rest, split) if len(rest) > 1 else scaling_figure(rest[0], split) if rest else None
        if fig is not None:
            found[f"{'slices' if len(rest) > 1 else 'scaling'}_{split}"] = fig
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
    for old in folder.glob("*.png"):
        old.unlink()  # nor do figures of an earlier report (other runs, other names) stay beside them
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
