"""The episode plot (`episode_<cell>_seed<S>_epoch<N>.png`, `sage.study.plots.make_plots`): one training episode
turn by turn, teacher confidence coloured by the gate's verdict, with each turn's action and feedback, to
see what SAGE skips. Apart from `sage.study.plots` to keep that module small."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from matplotlib.patches import Patch

from sage.specs import INTERVENE, SKIP, STRONG, WEAK
from sage.study.drawing import plt, save_png
from sage.study.results import seed_dirs

GATE_COLORS = {
    SKIP: "#9e9e9e",
    WEAK: "#f0a030",
    STRONG: "#d03030",
    INTERVENE: "#d03030",
    None: "#4a78c0",
}


def plot_episode(episode: dict, path: Path, max_turns: int = 20) -> Path:
    """Top: teacher confidence per turn, coloured by the gate label. Bottom: a table of the turns."""
    turns = episode["turns"][:max_turns]
    n = len(turns)
    table_h = 0.28 * (n + 1)
    fig, (ax, table_ax) = plt.subplots(
        2, 1, figsize=(13, 3.0 + table_h), gridspec_kw={"height_ratios": [2.4, table_h]}
    )
    conf = [t.get("confidence_mean") for t in turns]
    labels = [t.get("gate_label") for t in turns]
    bars = ax.bar(
        range(n), [c or 0.0 for c in conf], color=[GATE_COLORS.get(lbl, "#4a78c0") for lbl in labels]
    )
    for bar, c in zip(bars, conf, strict=True):  # the value, or n/a when the run scores no confidence
        ax.annotate(
            "n/a" if c is None else f"{c:.2f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            fontsize=7,
        )
    handles = [
        Patch(color=GATE_COLORS.get(lbl, "#4a78c0"), label=lbl or "no label") for lbl in dict.fromkeys(labels)
    ]
    ax.set_xticks(range(n))
    ax.set_xticklabels([str(k) for k in range(n)])  # turns are stored in order
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("turn")
    ax.set_ylabel("teacher confidence\n(mean over tokens)")
    ax.legend(handles=handles, title="gate", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    status = "won" if episode.get("won") else "not won"
    ax.set_title(
        textwrap.shorten(
            f"{episode.get('task', '')} ({episode.get('task_type')}, epoch "
            f"{episode.get('epoch')}, {status}, {episode.get('length')} steps)",
            130,
        )
    )
    table_ax.axis("off")
    rows = [
        [
            str(k),
            _short(t.get("action") or f"(invalid) {t.get('response') or ''}", 44),
            t.get("gate_label") or "-",
            "-" if t.get("confidence_mean") is None else f"{t['confidence_mean']:.2f}",
            _short(t.get("feedback") or "", 80),
        ]
        for k, t in enumerate(turns)
    ]
    table = table_ax.table(
        cellText=rows,
        colLabels=["turn", "action", "gate", "conf.", "feedback"],
        colWidths=[0.05, 0.3, 0.08, 0.06, 0.51],
        bbox=[0, 0, 1, 1],
        cellLoc="left",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for cell in table.get_celld().values():
        cell.PAD = 0.02  # the default pads wide columns by 10% of their width
    for i, lbl in enumerate(labels, start=1):
        table[i, 2].set_facecolor(GATE_COLORS.get(lbl, "#ffffff") + "55")
    return save_png(fig, path)


def _short(text: str, width: int) -> str:
    return textwrap.shorten(" ".join(text.split()), width, placeholder="…") or "-"


def pick_episode(output, cells: list[str]) -> tuple[str, int, Path, dict] | None:
    """An informative episode: from the first cell with transcripts (callers order by preference), its
    lowest seed's last epoch, the episode with the most distinct gate labels, then the longest."""
    for cell in cells:
        for seed, d in seed_dirs(output, cell).items():
            files = sorted((d / "episodes").glob("epoch_*.jsonl"))
            if not files:
                continue
            eps = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
            eps = [e for e in eps if e.get("turns")]
            if eps:
                best = max(
                    eps, key=lambda e: (len({t.get("gate_label") for t in e["turns"]}), len(e["turns"]))
                )
                return cell, seed, files[-1], best
    return None
