"""`sage view RUN_DIR [--epoch K] [--out FILE]`: one self-contained HTML file to browse a run's episodes.

The episodes (`RUN_DIR/episodes/epoch_NNN[_rankR].jsonl`, written by `callbacks.episode_log`) are
embedded as JSON and drawn by a small vanilla script (`sage.study.view_page`): no server and no network
assets, so the file can be mailed or opened from a cluster's scratch disk. Turns are rendered only when
an episode is expanded, which keeps a paper-scale epoch (128 episodes x 50 turns) quick to open.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
import sys
from pathlib import Path

from sage.errors import ArgumentParser
from sage.paths import check_writable_dir
from sage.study.view_page import CSS, JS

EPISODE_FILE = re.compile(r"epoch_(\d+)(?:_rank(\d+))?\.jsonl$")

# metrics.csv column -> summary key (the per-epoch values SageModule logs)
METRIC_KEYS = {
    "train/episode_success": "success",
    "train/episode_length": "length",
    "train/invalid_format_rate": "invalid_format_rate",
    "train/gate_mean": "gate_mean",
    "train/confidence_mean": "confidence_mean",
    "train/loss_epoch": "loss",
    "val/seen/success": "val_seen_success",
    "val/unseen/success": "val_unseen_success",
}
GATE_RATE = re.compile(r"train/gate/(\w+)_rate$")
# Summary keys a rank's own metrics.csv row can get wrong for a multi-rank epoch (logged unsynced).
EPISODE_KEYS = ("success", "length", "invalid_format_rate", "gate_mean", "confidence_mean", "gate_rates")


def episode_files(run_dir: Path) -> dict[int, list[Path]]:
    """epoch -> its JSONL files (one per rank), from `run_dir/episodes` or `run_dir` itself."""
    folder = run_dir / "episodes" if (run_dir / "episodes").is_dir() else run_dir
    found: dict[int, list[Path]] = {}
    for path in sorted(folder.glob("epoch_*.jsonl")):
        m = EPISODE_FILE.search(path.name)
        if m:
            found.setdefault(int(m.group(1)), []).append(path)
    return found


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(episodes: list[dict]) -> dict[int, dict]:
    """Per-epoch summary computed from the episodes alone (old files: confidence from turn means)."""
    by_epoch: dict[int, list[dict]] = {}
    for ep in episodes:
        by_epoch.setdefault(int(ep.get("epoch", 0)), []).append(ep)
    out = {}
    for epoch, eps in sorted(by_epoch.items()):
        turns = [t for ep in eps for t in ep.get("turns", [])]
        n_ep, n_turn = len(eps), max(1, len(turns))
        labels: dict[str, int] = {}
        for t in turns:
            if t.get("gate_label"):
                labels[t["gate_label"]] = labels.get(t["gate_label"], 0) + 1
        tokens = [c for t in turns for c in (t.get("confidence") or [])]
        means = [t["confidence_mean"] for t in turns if t.get("confidence_mean") is not None]
        conf = tokens or means
        out[epoch] = {
            "episodes": n_ep,
            "turns": len(turns),
            "success": sum(bool(ep.get("won")) for ep in eps) / n_ep,
            "length": len(turns) / n_ep,
            "invalid_format_rate": sum(not t.get("valid_format", True) for t in turns) / n_turn,
            "gate_mean": sum(float(t.get("gate", 1.0)) for t in turns) / n_turn,
            "gate_rates": {k: v / n_turn for k, v in sorted(labels.items())},
            "confidence_mean": sum(conf) / len(conf) if conf else None,
            "source": "episodes",
        }
    return out


def metrics_summary(path: Path) -> dict[int, dict]:
    """Per-epoch values from a CSVLogger metrics.csv (the last non-empty value of each column wins)."""
    out: dict[int, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            rec = out.setdefault(int(float(row["epoch"])), {})
            for col, value in row.items():
                if not value or col is None:
                    continue
                if col in METRIC_KEYS:
                    rec[METRIC_KEYS[col]] = float(value)
                elif m := GATE_RATE.match(col):
                    rec.setdefault("gate_rates", {})[m.group(1).upper()] = float(value)
    return out


def load_run(run_dir, epoch: int | None = None) -> tuple[list[dict], dict[int, dict]]:
    """All episodes of one epoch (every rank's file) or of every epoch, and a summary per epoch.

    The summary takes success, gate rates and confidence from `metrics.csv` when present, else from
    the episodes; for an epoch written by several ranks it keeps the episodes' values, because the
    per-epoch stats in metrics.csv are rank 0's own (logged without a sync)."""
    run_dir = Path(run_dir)
    files = episode_files(run_dir)
    if not files:
        raise FileNotFoundError(f"no episodes/epoch_*.jsonl under {run_dir}")
    if epoch is not None:
        if epoch not in files:
            raise ValueError(f"epoch {epoch} has no episodes in {run_dir}; epochs there: {sorted(files)}")
        files = {epoch: files[epoch]}
    episodes = [ep for e in sorted(files) for path in files[e] for ep in read_jsonl(path)]
    summary = summarize(episodes)
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        for e, values in metrics_summary(metrics).items():
            if e not in summary:
                continue
            if len(files[e]) > 1:
                values = {k: v for k, v in values.items() if k not in EPISODE_KEYS}
            if "gate_rates" in values:  # metrics.csv has no column for labels such as ALWAYS
                values["gate_rates"] = summary[e]["gate_rates"] | values["gate_rates"]
            summary[e] |= values
            if any(k in values for k in EPISODE_KEYS):
                summary[e]["source"] = "metrics.csv"
    return episodes, summary


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def embed_json(obj) -> str:
    """JSON safe inside <script>: every `<` escaped, so no game text can close the tag or open a comment;
    NaN/inf (which JSON.parse rejects) become null, shown as n/a."""
    kw = {"separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}
    try:
        text = json.dumps(obj, **kw)
    except ValueError:
        text = json.dumps(_finite(obj), **kw)
    return text.replace("<", "\\u003c")


def build_html(episodes: list[dict], title: str, summary: dict | None = None) -> str:
    """The whole viewer page for `episodes` (records of `callbacks.episode_log.episode_record`)."""
    summary = summarize(episodes) if summary is None else summary
    data = {"title": title, "episodes": episodes, "summary": {str(k): v for k, v in summary.items()}}
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        "<body data-rendered-turns=\"0\"><div id=\"app\"></div>\n"
        f"<script type=\"application/json\" id=\"sage-data\">{embed_json(data)}</script>\n"
        f"<script>{JS}</script>\n</body></html>\n"
    )


def default_out(run_dir: Path, epoch: int | None) -> Path:
    return run_dir / ("viewer.html" if epoch is None else f"viewer_epoch_{epoch}.html")


def main(argv: list[str] | None = None) -> Path:
    parser = ArgumentParser(prog="sage view", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="runs/<name>/version_N (holding episodes/epoch_*.jsonl)")
    parser.add_argument("--epoch", type=int, default=None, help="only this epoch (default: every epoch)")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: RUN_DIR/viewer[_epoch_K].html)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    if args.epoch is not None and args.epoch < 0:
        parser.error(f"--epoch={args.epoch} must be >= 0")
    if not args.run_dir.is_dir():
        parser.error(f"run_dir={str(args.run_dir)!r}: no such folder (give runs/<name>/version_N)")
    if args.out is not None:
        check_writable_dir("--out", args.out.parent)
    try:
        episodes, summary = load_run(args.run_dir, args.epoch)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    title = args.title or f"{args.run_dir}" + ("" if args.epoch is None else f" · epoch {args.epoch}")
    out = args.out or default_out(args.run_dir, args.epoch)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_html(episodes, title, summary), encoding="utf-8")
    turns = sum(len(ep.get("turns", [])) for ep in episodes)
    print(f"{out}  ({out.stat().st_size / 1e6:.2f} MB, {len(episodes)} episodes, {turns} turns)")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
