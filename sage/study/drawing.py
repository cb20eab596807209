"""What every plot of the study shares: matplotlib on the Agg backend (no display needed), the evaluation
panels' titles, the one legend right of the last panel, and the deterministic PNG writer.

Apart from `sage.study.plots` so that the plot modules (`plots`, `curves`, `episode_plot`) all draw with
the same helpers without importing each other in a circle.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from sage.io import atomic_path  # noqa: E402

PANELS = {
    "seen": "valid_seen (greedy)",
    "unseen": "valid_unseen (greedy)",
    "train": "training episodes (sampled; SFT: expert)",
}

def shared_legend(axes, final_star: bool) -> None:
    """One legend right of the last panel: every label once, whichever panel drew it, and (final_star) the
    star marker of the final `sage validate`."""
    legend = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    handles, names = list(legend.values()), list(legend)
    if final_star:
        handles.append(Line2D([], [], ls="", marker="*", ms=11, color="0.4"))
        names.append("final validate")
    axes[-1].legend(handles, names, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9)


def save_png(fig, path: Path) -> Path:
    """Written atomically and without the PNG "Software" tag (the matplotlib version): the same figure gives
    the same bytes, so committed plots re-render identically (Agg itself is deterministic)."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
