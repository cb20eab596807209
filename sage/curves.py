"""Learning curves against student rollout turns (`curves_vs_turns.png`): validation success on seen and
unseen games and the reverse KL to the teacher, mean over seeds, one line per trained cell.

Why turns and not epochs: cells differ in how many turns an epoch plays (rollouts end early, SFT plays
the expert's shorter games), and rollout turns are what a CPU study pays for. x of a validation at the end
of epoch e is `train/turns` (metrics.csv, `sage.epoch.episode_stats`) summed over epochs 0..e
(`sage.results.cumulative_turns`); the final `sage validate` sits at the total; the matrix's `start_cell`
(the untrained student, evaluated once) is every curve's x=0. For SFT the turns are the expert's.
Cells that do not train (teacher, zero-shot) are dashed horizontal lines.
"""

from __future__ import annotations

import json
from pathlib import Path

from sage.plots import PANELS, plt, save_png, shared_legend
from sage.results import (
    cumulative_turns,
    eval_value,
    load_eval_results,
    mean_std,
    read_epoch_metrics,
    read_val_history,
    seed_dirs,
)

# metric -> (section, split, key) of an evaluation record (a val_history line, eval_results.json)
METRICS = {
    "seen": ("success", "seen", "overall"),
    "unseen": ("success", "unseen", "overall"),
    "seen_kl": ("turn_rates", "seen", "reverse_kl"),
    "unseen_kl": ("turn_rates", "unseen", "reverse_kl"),
}
FINAL = 1_000_000  # the sort key of the final validate: after every epoch


def seed_points(d: Path) -> dict[int, tuple[float, dict]]:
    """One run's evaluations with a turn count: epoch -> (x, val_history line), and FINAL -> (total turns,
    eval_results.json) when the run finished and every epoch logged its turns."""
    metrics = read_epoch_metrics(d / "metrics.csv", ["train/turns"])
    cum = cumulative_turns(metrics)
    out = {int(h["epoch"]): (cum[int(h["epoch"])], h) for h in read_val_history(d / "val_history.jsonl")
           if int(h["epoch"]) in cum}
    if cum and len(cum) == len(metrics) and (d / "eval_results.json").is_file():
        out[FINAL] = (cum[max(cum)], json.loads((d / "eval_results.json").read_text()))
    return out


def cell_curve(
    root, cell: str, start: dict[str, float] | None = None
) -> dict[str, list[tuple[float, float, bool]]]:
    """metric -> [(x, y, final)] in evaluation order, x and y each the mean over the seeds that have the
    metric there, final for the final validate; `start` (metric -> value) is prepended at x=0."""
    per_seed = [seed_points(d) for d in seed_dirs(root, cell).values()]
    keys = sorted({k for pts in per_seed for k in pts})
    curves = {}
    for metric, (section, split, key) in METRICS.items():
        line = [(0.0, start[metric], False)] if start and start.get(metric) is not None else []
        for k in keys:
            pairs = [(x, v) for pts in per_seed if k in pts
                     for x, v in [(pts[k][0], eval_value(pts[k][1], section, split, key))] if v is not None]
            if pairs:
                line.append((mean_std([x for x, _ in pairs])[0], mean_std([v for _, v in pairs])[0], k == FINAL))
        curves[metric] = line
    return curves


def final_means(root, cell: str) -> dict[str, float]:
    """metric -> mean over the finished seeds of the final evaluation (the x=0 point of a start cell)."""
    res = load_eval_results(root, cell).values()
    out = {m: mean_std([eval_value(r, *where) for r in res])[0] for m, where in METRICS.items()}
    return {m: v for m, v in out.items() if v is not None}


PANEL_SPECS = (  # title, ylabel, [(metric, line style)], scale
    (PANELS["seen"], "success % (mean over seeds)", [("seen", "-")], 100),
    (PANELS["unseen"], "success % (mean over seeds)", [("unseen", "-")], 100),
    ("reverse KL to the teacher", "nats/token (seen -, unseen --)",
     [("seen_kl", "-"), ("unseen_kl", "--")], 1),
)


def plot_turn_curves(curves: dict, baselines: dict, path: Path) -> Path:
    """curves: label -> metric -> [(x, y, final)] (the final validate drawn as a star); baselines: label ->
    metric -> value (horizontal lines)."""
    fig, axes = plt.subplots(1, len(PANEL_SPECS), figsize=(16, 4.5))
    for i, (label, by_metric) in enumerate(curves.items()):
        for ax, (_, _, lines, scale) in zip(axes, PANEL_SPECS, strict=True):
            for metric, style in lines:
                pts = by_metric.get(metric, [])
                color = f"C{i % 10}"
                ax.plot([p[0] for p in pts], [scale * p[1] for p in pts], style, color=color,
                        label=label if pts and style == "-" else None)
                for marker, ms, final in (("o", 6, False), ("*", 13, True)):
                    sel = [p for p in pts if p[2] == final]
                    ax.plot([p[0] for p in sel], [scale * p[1] for p in sel], marker, ms=ms, color=color)
    for j, (label, values) in enumerate(baselines.items()):
        color = f"C{(len(curves) + j) % 10}"
        for ax, (_, _, lines, scale) in zip(axes, PANEL_SPECS, strict=True):
            for metric, _ in lines:
                if values.get(metric) is not None:
                    ax.axhline(scale * values[metric], ls=":", lw=1.2, color=color, label=label)
    for ax, (title, ylabel, _, scale) in zip(axes, PANEL_SPECS, strict=True):
        ax.set_title(title)
        ax.set_xlabel("student rollout turns (cumulative)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if scale == 100:
            ax.set_ylim(-2, 102)
    shared_legend(axes, final_star=True)
    fig.suptitle("Validations during fit (o) and the final `sage validate` (*) against student rollout turns")
    return save_png(fig, path)


def make_turn_curves(root, cells: list[str], labels: dict[str, str], fitted: list[str],
                     start_cell: str | None = None) -> list[Path]:
    """`curves_vs_turns.png` in `root` when any trained cell has a point with a turn count; [] otherwise."""
    root = Path(root)
    start = final_means(root, start_cell) if start_cell else None
    curves = {labels.get(c, c): cell_curve(root, c, start) for c in fitted if c != start_cell}
    curves = {k: v for k, v in curves.items() if any(len(pts) > (1 if start else 0) for pts in v.values())}
    if not curves:
        return []
    baselines = {labels.get(c, c): final_means(root, c) for c in cells if c not in fitted and c != start_cell}
    return [plot_turn_curves(curves, {k: v for k, v in baselines.items() if v}, root / "curves_vs_turns.png")]
