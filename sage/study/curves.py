"""Learning curves against student rollout turns (`curves_vs_turns.png`): validation success on seen and
unseen games, the reverse KL to the teacher and the admissible-action rate (the finer signal while success is
near 0), mean over seeds, one line per trained cell.

Why turns and not epochs: cells differ in how many turns an epoch plays (rollouts end early, SFT plays
the expert's shorter games), and rollout turns are what a CPU study pays for. x of a validation at the end
of epoch e is `train/turns` (metrics.csv, `sage.epoch.episode_stats`) summed over epochs 0..e
(`sage.study.results.cumulative_turns`); the final `sage validate` sits at the total; the matrix's `start_cell`
(the untrained student, evaluated once) is every curve's x=0. For SFT the turns are the expert's.
Cells that do not train (teacher, zero-shot) are dashed horizontal lines.

Same games at every point: when a run kept its per-game records (`val_games.jsonl` of the validations during
fit, `eval_games.jsonl` of the final one), its final point and the start cell's x=0 are computed on the
games its validations during fit played (`sage.study.eval_games.same_games`): with half panels during fit and the
whole ones at the end, a curve would otherwise mix two game sets. The tables keep the whole panels.
"""

from __future__ import annotations

import json
from pathlib import Path

from sage.study.drawing import PANELS, plt, save_png, shared_legend
from sage.study.eval_games import game_records, same_games, summarize
from sage.study.results import (
    cumulative_turns,
    eval_value,
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
    "seen_admissible": ("turn_rates", "seen", "admissible_rate"),
    "unseen_admissible": ("turn_rates", "unseen", "admissible_rate"),
}
FINAL = 1_000_000  # the sort key of the final validate: after every epoch


def curve_games(d: Path) -> list[dict] | None:
    """The per-game records of a run's validations during fit (their (split, game id) pairs are the games of
    its curve), or None when it kept none."""
    return game_records(sorted(d.glob("val_games*.jsonl"))) or None


def final_payload(d: Path, games: list[dict] | None) -> dict | None:
    """A run's final evaluation: on ``games`` when given and the run kept its per-game records, else its
    `eval_results.json` (the whole panels); None when it has not finished."""
    if not (d / "eval_results.json").is_file():
        return None
    records = game_records(sorted(d.glob("eval_games*.jsonl")))
    if games and records:
        kept = same_games(records, games)
        if kept:
            return summarize(kept)
    return json.loads((d / "eval_results.json").read_text())


def seed_points(d: Path) -> dict[int, tuple[float, dict]]:
    """One run's evaluations with a turn count: epoch -> (x, val_history line), and FINAL -> (total turns,
    final evaluation on the curve's games) when the run finished and every epoch logged its turns."""
    metrics = read_epoch_metrics(d / "metrics.csv", ["train/turns"])
    cum = cumulative_turns(metrics)
    out = {int(h["epoch"]): (cum[int(h["epoch"])], h) for h in read_val_history(d / "val_history.jsonl")
           if int(h["epoch"]) in cum}
    final = final_payload(d, curve_games(d))
    if cum and len(cum) == len(metrics) and final is not None:
        out[FINAL] = (cum[max(cum)], final)
    return out


def final_means(root, cell: str, games: list[dict] | None = None) -> dict[str, float]:
    """metric -> mean over the finished seeds of the final evaluation (on ``games`` where the seed kept its
    per-game records): a start cell's x=0, an evaluation-only cell's horizontal line."""
    res = [p for d in seed_dirs(root, cell).values() if (p := final_payload(d, games)) is not None]
    out = {m: mean_std([eval_value(r, *where) for r in res])[0] for m, where in METRICS.items()}
    return {m: v for m, v in out.items() if v is not None}


def cell_curve(root, cell: str, start_cell: str | None = None) -> dict[str, list[tuple[float, float, bool]]]:
    """metric -> [(x, y, final)] in evaluation order, x and y each the mean over the seeds that have the
    metric there, final for the final validate; the start cell's value (on each seed's curve games, then
    averaged) is prepended at x=0."""
    dirs = list(seed_dirs(root, cell).values())
    per_seed = [seed_points(d) for d in dirs]
    starts = [final_means(root, start_cell, curve_games(d)) for d, pts in zip(dirs, per_seed, strict=True)
              if pts] if start_cell else []
    keys = sorted({k for pts in per_seed for k in pts})
    curves = {}
    for metric, (section, split, key) in METRICS.items():
        at_zero = [s[metric] for s in starts if s.get(metric) is not None]
        line = [(0.0, mean_std(at_zero)[0], False)] if at_zero else []
        for k in keys:
            pairs = [(x, v) for pts in per_seed if k in pts
                     for x, v in [(pts[k][0], eval_value(pts[k][1], section, split, key))] if v is not None]
            if pairs:
                line.append((mean_std([x for x, _ in pairs])[0], mean_std([v for _, v in pairs])[0], k == FINAL))
        curves[metric] = line
    return curves


PANEL_SPECS = (  # title, ylabel, [(metric, line style)], scale
    (PANELS["seen"], "success % (mean over seeds)", [("seen", "-")], 100),
    (PANELS["unseen"], "success % (mean over seeds)", [("unseen", "-")], 100),
    ("reverse KL to the teacher", "nats/token (seen -, unseen --)",
     [("seen_kl", "-"), ("unseen_kl", "--")], 1),
    ("admissible actions", "% of turns (seen -, unseen --)",
     [("seen_admissible", "-"), ("unseen_admissible", "--")], 100),
)


def plot_turn_curves(curves: dict, baselines: dict, path: Path) -> Path:
    """curves: label -> metric -> [(x, y, final)] (the final validate drawn as a star); baselines: label ->
    metric -> value (horizontal lines)."""
    fig, axes = plt.subplots(1, len(PANEL_SPECS), figsize=(21, 4.5))
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
            for metric, style in lines:  # seen dotted, unseen dash-dotted
                if values.get(metric) is not None:
                    ax.axhline(scale * values[metric], ls=":" if style == "-" else "-.", lw=1.2, color=color,
                               label=label if style == "-" else None)
    for ax, (title, ylabel, _, scale) in zip(axes, PANEL_SPECS, strict=True):
        ax.set_title(title)
        ax.set_xlabel("student rollout turns (cumulative)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if scale == 100:
            ax.set_ylim(-2, 102)
    shared_legend(axes, final_star=True)
    fig.suptitle("Validations during fit (o) and the final `sage validate` (*) against student rollout turns\n"
                 "(every point on the games the validations during fit played, where the runs kept per-game records)")
    return save_png(fig, path)


def make_turn_curves(root, cells: list[str], labels: dict[str, str], fitted: list[str],
                     start_cell: str | None = None) -> list[Path]:
    """`curves_vs_turns.png` in `root` when any trained cell has a point with a turn count; [] otherwise."""
    root = Path(root)
    curves = {labels.get(c, c): cell_curve(root, c, start_cell) for c in fitted if c != start_cell}
    curves = {k: v for k, v in curves.items() if any(p[0] > 0 for pts in v.values() for p in pts)}
    if not curves:
        return []
    # the evaluation-only cells' lines on the games of the first trained run that kept per-game records
    games = next((g for c in fitted for d in seed_dirs(root, c).values() if (g := curve_games(d))), None)
    baselines = {labels.get(c, c): final_means(root, c, games) for c in cells if c not in fitted and c != start_cell}
    return [plot_turn_curves(curves, {k: v for k, v in baselines.items() if v}, root / "curves_vs_turns.png")]
