"""The answer in words: per horizon, the scaling fit, whether each larger budget beats the next smaller one
beyond the interval, and whether any model beats the best baseline. Every comparison is a paired bootstrap
of BCE differences on the same days (BCE is the objective every model was selected on). Which model and
which baseline are "best" is decided on validation, also where their test numbers are compared."""

from __future__ import annotations

import json

import numpy as np

from report.evaluate import Options, Row, Scores, Section, Versus, paired_resamples
from report.scaling import fit_scaling
from report.stats import Estimate, difference

OPTIMISTIC = " (optimistic: validation also chose the checkpoints and trials)"


def paired(a: Scores, b: Scores, metric: str, options: Options) -> Estimate | None:
    """metric(a) − metric(b) on their common days, resampled together; None without per-sample predictions."""
    if a.samples is None or b.samples is None:
        return None
    common = a.samples.index.intersection(b.samples.index)
    if len(common) < 2:
        return None
    pa, pb = a.probs(common), b.probs(common)  # (S_a, n), (S_b, n): seed means are compared
    y = a.samples.loc[common, "label"].to_numpy(float)
    return difference(metric, pa, pb, y, paired_resamples(common, options))


def verdict(d: Estimate, a: str, b: str, margin: float) -> str:
    """d = BCE(a) − BCE(b): lower is better; equivalence within ±margin first (report/stats.Estimate.judge)."""
    return {
        "—": "no interval (fewer than two bootstrap blocks of common days)",
        "equivalent": f"equivalent (the interval lies within ±{margin:g} BCE)",
        "better": f"{a} is better beyond the interval",
        "worse": f"{b} is better beyond the interval",
        "inconclusive": f"inconclusive (no difference beyond the interval, nor equivalence within ±{margin:g} BCE)",
    }[d.judge(margin)]


def _compare(a: Row, b: Row, split: str, options: Options) -> tuple[str, Estimate | None]:
    d_bce = paired(a.scores[split], b.scores[split], "bce", options)
    if d_bce is None:
        return f"{a.model} vs {b.model}: no per-sample predictions, no paired interval", None
    d_auc = paired(a.scores[split], b.scores[split], "auroc", options)
    return (f"{a.model} vs {b.model}: {split} BCE {d_bce.text(4, sign=True)}, AUROC {d_auc.text(3, sign=True)}: "
            f"{verdict(d_bce, a.model, b.model, options.margin)}", d_bce)  # fmt: skip


def _power_law(fit) -> str:
    if fit.law is None:
        return "power law a·N^(−α) + c: needs three budgets"
    falling = f"; the loss falls with size in {fit.falling_share:.0%} of resamples" if fit.alpha.has_interval else ""
    if fit.unidentified:
        return f"power law a·N^(−α) + c: not identified ({fit.unidentified}){falling}"
    return f"power law a·N^(−α) + c: α = {fit.alpha.text(3)}, a = {fit.law.a:.3g}, c = {fit.law.c:.4f}{falling}"


def _scaling(section: Section, horizon: int, models: list[Row], options: Options) -> list[str]:
    with_samples = [r for r in models if r.scores["val"].samples is not None]
    if len({r.n_params for r in with_samples}) < 2:
        return ["scaling fit: needs two budgets with validation predictions"]
    common = with_samples[0].scores["val"].samples.index
    for row in with_samples[1:]:
        common = common.intersection(row.scores["val"].samples.index)
    probs = [r.scores["val"].probs(common) for r in with_samples]  # per budget (S, n)
    y = with_samples[0].scores["val"].samples.loc[common, "label"].to_numpy(float)
    idx = paired_resamples(common, options)
    fit = fit_scaling(np.array([r.n_params for r in with_samples]), probs, y, idx)
    section.fits[horizon] = fit
    line = f"log-log line of val BCE: BCE ∝ N^(−β), β = {fit.slope.text(4)} over {fit.k} budgets, {fit.n} common days"
    return [line, _power_law(fit)]


def _versus_baselines(models: list[Row], baselines: list[Row], split: str, options: Options) -> list[str]:
    """The best model against the best baseline (both chosen on validation) on `split`; who beats that baseline.
    Every model row gets its own difference to that baseline and a verdict (Row.versus)."""
    best_base = min(baselines, key=lambda r: r.scores["val"].metrics["bce"].value)
    best_model = min(models, key=lambda r: r.scores["val"].metrics["bce"].value)
    for row in models:
        d = paired(row.scores[split], best_base.scores[split], "bce", options)
        row.versus[split] = Versus(best_base.model, d, options.margin)
    line, d = _compare(best_model, best_base, split, options)
    if d is None:
        return [f"best model vs best baseline (chosen on val), {line}"]
    beaten = [m.model for m in models if m.versus[split].verdict == "better"]
    answer = (f"{', '.join(beaten)} beat{'s' if len(beaten) == 1 else ''} the best baseline ({best_base.model})"
              if beaten else f"no model beats the best baseline ({best_base.model}) beyond the interval and the "
              f"±{options.margin:g} BCE margin")  # fmt: skip
    return [f"best model vs best baseline (chosen on val), {line}", f"{split}: {answer}"]


def _steps(models: list[Row], split: str, options: Options) -> list[str]:
    """Each budget against the next smaller one, and the answer over all steps."""
    lines, wins, compared = [], [], 0
    for smaller, larger in zip(models, models[1:], strict=False):
        line, d = _compare(larger, smaller, split, options)
        effort = larger.run.candidates, smaller.run.candidates
        if effort[0] != effort[1]:
            line += f" (unequal search: best of {effort[0]} vs best of {effort[1]} configurations)"
        lines.append(line)
        if d is not None and d.has_interval:
            compared += 1
            wins.append(d.judge(options.margin))
    if compared:
        better = wins.count("better")
        if better == compared:
            answer = "yes, at every step compared" if compared == len(models) - 1 else f"at {compared} compared steps"
        else:
            answer = f"at {better} of {compared} compared steps" if better else "no"
        caveat = OPTIMISTIC if split == "val" else ""
        equivalent = (
            f"; {wins.count('equivalent')} equivalent within ±{options.margin:g} BCE" if "equivalent" in wins else ""
        )
        lines.append(f"larger budgets beat smaller ones beyond the {split} interval{caveat}: {answer} "
                     f"({compared} of {len(models) - 1} steps compared{equivalent})")  # fmt: skip
    return lines


def _collapse(model: str, split: str, scores: Scores) -> str:
    bce = scores.metrics["bce"].value
    return f"{model} ({split}: pred std {scores.pred_std:.2g}, BCE {bce:.4f} vs prior {scores.prior_bce:.4f})"


def horizon_findings(section: Section, horizon: int, options: Options) -> None:
    rows = [r for r in section.rows if r.horizon == horizon]
    models = [r for r in rows if r.kind == "model" and "val" in r.scores]
    baselines = [r for r in rows if r.kind == "baseline"]
    lines = _scaling(section, horizon, models, options) if models else []
    for split in ("val", "test"):
        scored = [r for r in models if split in r.scores]
        if split == "test" and len(scored) < len(models):
            lines.append(f"test: {len(scored)} of {len(models)} budgets tested with `cli.py test`")
        lines += _steps(scored, split, options)
        against = [b for b in baselines if split in b.scores]
        if scored and against:
            lines += _versus_baselines(scored, against, split, options)
        started = [r for r in scored if split in r.start]
        if started:
            added = "; ".join(f"{r.model} {r.start[split].difference.text(4, sign=True)} ({r.start[split].verdict}, "
                              f"r = {r.start[split].correlation:.4f})" for r in started)  # fmt: skip
            lines.append(f"{split}: what training added to the logistic start (BCE − the start's): {added}")
    collapsed = [_collapse(r.model, s, r.scores[s]) for r in models for s in r.scores if r.scores[s].collapsed]
    if collapsed:
        lines.append("collapsed: " + "; ".join(collapsed))
    section.findings += [f"h={horizon}: {line}" for line in lines]


def add_findings(section: Section, options: Options) -> None:
    for horizon in sorted({r.horizon for r in section.rows}):
        horizon_findings(section, horizon, options)


def arm_findings(sections: list[Section], options: Options) -> None:
    """Each other arm against the hybrid on the same data, horizon and budget: BCE(arm) − BCE(hybrid), paired on
    the same days (Row.vs_hybrid), and a line per horizon and split in the other arm's findings."""
    hybrids = {(json.dumps(s.settings, sort_keys=True, default=str), s.scope): s for s in sections if s.arm == "hybrid"}
    for section in sections:
        hybrid = hybrids.get((json.dumps(section.settings, sort_keys=True, default=str), section.scope))
        if section.arm == "hybrid" or hybrid is None:
            continue
        for horizon in sorted({r.horizon for r in section.rows}):
            theirs = {r.model: r for r in hybrid.rows if r.kind == "model" and r.horizon == horizon}
            for split in ("val", "test"):
                parts = []
                for row in (r for r in section.rows if r.kind == "model" and r.horizon == horizon):
                    other = theirs.get(row.model)
                    if other is None or split not in row.scores or split not in other.scores:
                        continue
                    d = paired(row.scores[split], other.scores[split], "bce", options)
                    if d is not None:
                        row.vs_hybrid[split] = d
                        parts.append(f"{row.model} {d.text(4, sign=True)} ({d.judge(options.margin)})")
                if parts:
                    section.findings.append(f"h={horizon}: {split}: {section.arm} − hybrid at the same budget "
                                            f"(BCE): {'; '.join(parts)}")  # fmt: skip
