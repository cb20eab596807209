"""PNG plots of an experiment matrix (matplotlib, Agg backend: no display needed).

- `success_vs_epoch.png`: seen/unseen success during fit per method (mean over seeds); cells that do
  not train (zero-shot, teacher) as dashed horizontal lines at their final success.
- `final_metrics.png`: each cell's final evaluation, success and admissible-action rate on seen/unseen,
  bars at the mean over seeds with each seed as a dot (the spread is visible, not only its std).
- `gate_vs_epoch.png`: the turn gate's SKIP/WEAK/STRONG rates and the mean teacher confidence per epoch.
- `episode_<cell>_seed<S>_epoch<N>.png`: one training episode turn by turn (teacher confidence coloured
  by the gate's verdict, with the action and environment feedback of each turn), to see what SAGE skips.
- `curves_vs_turns.png`: success, reverse KL and admissible rate against cumulative student rollout turns
  (`sage.study.curves`).

PNGs carry no version tag or timestamp: the same inputs give the same bytes (committed plots re-render).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.patches import Patch

from sage.study.curves import make_turn_curves
from sage.study.drawing import PANELS, plt, save_png, shared_legend
from sage.study.episode_plot import pick_episode, plot_episode
from sage.study.results import (
    SPLITS,
    eval_value,
    load_eval_results,
    mean_std,
    read_epoch_metrics,
    read_val_history,
    seed_dirs,
)

GATE_PANELS = (
    ("train/gate/skip_rate", "SKIP rate"),
    ("train/gate/weak_rate", "WEAK rate"),
    ("train/gate/strong_rate", "STRONG rate"),
    ("train/confidence_mean", "mean teacher confidence"),
)


def mean_over_seeds(series: list[dict[int, float | None]]) -> dict[int, float]:
    """epoch -> mean over the seeds that have a value at that epoch."""
    epochs = sorted({e for s in series for e in s})
    out = {}
    for e in epochs:
        m, _ = mean_std([s.get(e) for s in series])
        if m is not None:
            out[e] = m
    return out


def success_curves(output, cell: str) -> dict[str, dict[int, float]]:
    """panel -> epoch -> mean success over seeds: seen/unseen from each seed's val_history.jsonl, train from
    the epoch's rollouts in metrics.csv (cheap, so a study may skip validation during fit)."""
    dirs = list(seed_dirs(output, cell).values())
    hist = [read_val_history(d / "val_history.jsonl") for d in dirs]
    curves = {
        split: mean_over_seeds(
            [{h["epoch"]: h["success"].get(split, {}).get("overall") for h in hs} for hs in hist]
        )
        for split in SPLITS
    }
    train = [read_epoch_metrics(d / "metrics.csv", ["train/episode_success"]) for d in dirs]
    curves["train"] = mean_over_seeds([{e: m["train/episode_success"] for e, m in t.items()} for t in train])
    return curves


def final_success(output, cell: str) -> dict[str, float | None]:
    """split -> mean over seeds of the final evaluation (`eval_results.json`); {} when none finished."""
    res = load_eval_results(output, cell)
    if not res:
        return {}
    return {s: mean_std([r["success"].get(s, {}).get("overall") for r in res.values()])[0] for s in SPLITS}


FINAL_PANELS = (  # metric, (eval_results.json section, key), panel title
    ("success", ("success", "overall"), "success %"),
    ("admissible_rate", ("turn_rates", "admissible_rate"), "admissible actions % of turns"),
)


def final_values(output, cell: str) -> dict[str, dict[str, list[float]]]:
    """metric -> split -> the value of each finished seed (`eval_results.json`): overall success and the
    turn-level admissible rate (absent in results written before turn rates existed)."""
    res = load_eval_results(output, cell).values()
    return {
        metric: {s: [v for r in res if (v := eval_value(r, section, s, key)) is not None] for s in SPLITS}
        for metric, (section, key), _ in FINAL_PANELS
    }


def plot_final(values: dict, path: Path) -> Path:
    """values: label -> metric -> split -> per-seed values. One horizontal bar per (cell, split)."""
    labels = list(values)
    fig, axes = plt.subplots(1, len(FINAL_PANELS), figsize=(14, 0.55 * len(labels) + 1.6), sharey=True)
    height, colors = 0.38, dict(zip(SPLITS, ("#4a78c0", "#f0a030"), strict=True))
    for ax, (metric, _, title) in zip(axes, FINAL_PANELS, strict=True):
        for k, (split, color) in enumerate(colors.items()):
            for i, label in enumerate(labels):
                vals = [100 * v for v in values[label][metric][split]]
                y = i + (k - 0.5) * height
                if vals:
                    ax.barh(y, sum(vals) / len(vals), height, color=color, alpha=0.55)
                    ax.plot(vals, [y] * len(vals), "o", ms=4, color="black")
                else:
                    ax.text(0.5, y, "not run", va="center", fontsize=8, color="0.5")
        ax.set_title(title)
        ax.set_xlim(0, 100)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].set_ylim(len(labels) - 0.5, -0.5)  # first cell on top, no row clipped
    handles = [Patch(color=c, alpha=0.55, label=PANELS[s]) for s, c in colors.items()]
    axes[-1].legend(handles=handles, loc="lower right", fontsize=9)
    fig.suptitle("Final evaluation (greedy): bar = mean over seeds, dots = seeds")
    return save_png(fig, path)


def last_epoch(output, cell: str) -> int | None:
    """The last trained epoch of any seed (validate does not restore the epoch counter, so read the fit's logs)."""
    epochs = []
    for d in seed_dirs(output, cell).values():
        epochs += list(read_epoch_metrics(d / "metrics.csv")) + [
            h["epoch"] for h in read_val_history(d / "val_history.jsonl")
        ]
    return max(epochs, default=None)


def metric_curves(output, cell: str) -> dict[str, dict[int, float]]:
    """metric -> epoch -> mean over seeds, from each seed's metrics.csv epoch-level rows."""
    per_seed = [read_epoch_metrics(d / "metrics.csv") for d in seed_dirs(output, cell).values()]
    return {
        name: mean_over_seeds([{e: m.get(name) for e, m in s.items()} for s in per_seed])
        for name, _ in GATE_PANELS
    }


def _style(ax, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _epoch_axis(ax, xs: list[int]) -> None:
    if xs:  # integer epoch ticks; a single epoch gets a little room on both sides
        ax.set_xticks(sorted(set(xs)))
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)


def plot_success(curves: dict, finals: dict, baselines: dict, path: Path) -> Path:
    """curves: label -> split -> epoch -> success during fit; finals: label -> (last epoch, split -> success
    of the final `sage validate`); baselines: label -> split -> success of a cell that does not train."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(16, 4.5), sharey=True)
    labels = list(dict.fromkeys([*curves, *finals]))
    xs = [e for c in curves.values() for s in c.values() for e in s] + [f[0] for f in finals.values()]
    for i, label in enumerate(labels):
        color = f"C{i % 10}"
        for ax, split in zip(axes, PANELS, strict=True):
            pts = dict(curves.get(label, {}).get(split, {}))
            ax.plot(
                list(pts), [100 * v for v in pts.values()], "o-", color=color, label=label if pts else None
            )
            epoch, final = finals.get(label, (None, {}))
            if final.get(split) is not None:
                if pts:  # dotted link from the last in-fit validation to the final one
                    last = max(pts)
                    ax.plot([last, epoch], [100 * pts[last], 100 * final[split]], ":", color=color)
                ax.plot([epoch], [100 * final[split]], "*", ms=13, color=color, label=None if pts else label)
    for j, (label, by_split) in enumerate(baselines.items()):
        for ax, split in zip(axes, PANELS, strict=True):
            if by_split.get(split) is not None:
                ax.axhline(
                    100 * by_split[split], ls="--", lw=1.2, color=f"C{(len(labels) + j) % 10}", label=label
                )
    for ax, title in zip(axes, PANELS.values(), strict=True):
        _style(ax, title, "success % (mean over seeds)")
        _epoch_axis(ax, xs)
        ax.set_ylim(-2, 102)
    shared_legend(axes, final_star=bool(finals))
    fig.suptitle("ALFWorld success: validations during fit (o) and the final `sage validate` (*)")
    return save_png(fig, path)


def _gated(curves: dict) -> bool:
    """Whether a cell has a gate or confidence to show: OPD, GKD and SFT log gate rates of 0 (every turn
    is ALWAYS) and a confidence of 1, which would only crowd the SAGE curves."""
    rates = [v for name, pts in curves.items() if "gate" in name for v in pts.values()]
    confidence = [v for name, pts in curves.items() if "gate" not in name for v in pts.values()]
    return any(v > 0 for v in rates) or any(v != 1.0 for v in confidence)


def plot_gate(curves: dict, path: Path) -> Path:
    """curves: label -> metric -> epoch -> value (the GATE_PANELS metrics)."""
    fig, axes = plt.subplots(1, len(GATE_PANELS), figsize=(16, 4))
    xs = [e for c in curves.values() for s in c.values() for e in s]
    for label, by_metric in curves.items():
        for ax, (name, _) in zip(axes, GATE_PANELS, strict=True):
            pts = by_metric.get(name, {})
            if pts:
                ax.plot(list(pts), list(pts.values()), "o-", label=label)
    for ax, (_, title) in zip(axes, GATE_PANELS, strict=True):
        _style(ax, title, "fraction of turns" if "rate" in title else "max prob / neg. entropy")
        _epoch_axis(ax, xs)
        ax.set_ylim(-0.03, 1.03)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9)
    fig.suptitle("Turn gate and teacher confidence on the training rollouts (mean over seeds)")
    return save_png(fig, path)



def make_plots(
    output,
    cells: list[str],
    labels: dict[str, str] | None = None,
    fitted: list[str] | None = None,
    episode_cells=("sage_opd",),
    start_cell: str | None = None,
) -> list[Path]:
    """Every plot the available files allow; returns the PNG paths written into `output`. `start_cell`:
    the evaluation-only cell every learning curve against rollout turns starts from (`sage.study.curves`)."""
    output, labels = Path(output), labels or {}
    fitted = cells if fitted is None else fitted
    written = []
    curves = {labels.get(c, c): success_curves(output, c) for c in fitted}
    curves = {k: v for k, v in curves.items() if any(v.values())}
    finals, baselines = {}, {}
    for c in cells:
        final = final_success(output, c)
        if c not in fitted and final:
            baselines[labels.get(c, c)] = final
        elif final and (epoch := last_epoch(output, c)) is not None:
            finals[labels.get(c, c)] = (epoch, final)
    if curves or finals or baselines:
        written.append(plot_success(curves, finals, baselines, output / "success_vs_epoch.png"))
    values = {labels.get(c, c): final_values(output, c) for c in cells}
    if any(v for by_metric in values.values() for by_split in by_metric.values() for v in by_split.values()):
        written.append(plot_final(values, output / "final_metrics.png"))
    gate = {labels.get(c, c): metric_curves(output, c) for c in fitted}
    gate = {k: v for k, v in gate.items() if _gated(v)}
    if gate:
        written.append(plot_gate(gate, output / "gate_vs_epoch.png"))
    order = [c for c in episode_cells if c in fitted] + [c for c in fitted if c not in episode_cells]
    picked = pick_episode(output, order)
    if picked:
        cell, seed, file, ep = picked
        written.append(plot_episode(ep, output / f"episode_{cell}_seed{seed}_{file.stem}.png"))
    return written + make_turn_curves(output, cells, labels, fitted, start_cell)
