"""Does a cell's eval reverse KL fall because it loops? The KL split by repeated and new turns.

The study's eval KL is one token mean over every turn a student played greedily. A turn that repeats the
previous action, in a transcript that already holds it, is easy to predict for both models, so a cell
that loops more could show a lower KL without being closer to the teacher where it decides. This script
reads only the committed per-game records (`runs/<cell>/seed_<S>/eval_games.jsonl`, the final
whole-panel evaluation) and gives, per cell and split, pooled over seeds: the KL per token on repeated
turns, on new turns (not repeating the previous action), the share of tokens in repeated turns, and the
whole mean (and the new-turn KL of each seed). No model is loaded; it re-renders byte for byte.

    python results/cpu_v2/analysis/kl_by_repeat.py [--out results/cpu_v2/analysis/kl_by_repeat.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sage.study.eval_games import game_records, kl_by_repeat

HERE = Path(__file__).resolve().parent
RUNS = HERE.parent / "runs"


def split_kl(records: list[dict]) -> dict:
    """Token-mean KL over repeated turns, new turns and all turns of the records, with token counts."""
    acc = {"repeat": [0.0, 0], "new": [0.0, 0]}
    for r in records:
        for key, (kl, n) in kl_by_repeat(r).items():
            acc[key][0] += kl
            acc[key][1] += n
    total = acc["repeat"][1] + acc["new"][1]
    out = {f"kl_{k}": round(s / n, 4) if n else None for k, (s, n) in acc.items()}
    out["kl_all"] = round((acc["repeat"][0] + acc["new"][0]) / total, 4) if total else None
    out["repeat_token_share"] = round(acc["repeat"][1] / total, 4) if total else None
    out["tokens"] = total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "kl_by_repeat.json"))
    args = ap.parse_args()
    table: dict[str, dict] = {}
    for cell in sorted(p.name for p in RUNS.iterdir() if p.is_dir()):
        files = sorted((RUNS / cell).glob("seed_*/eval_games.jsonl"))
        by_seed = {f.parent.name: [r for r in game_records([f]) if r.get("kl") is not None] for f in files}
        by_seed = {s: rs for s, rs in by_seed.items() if rs}
        if not by_seed:
            continue
        table[cell] = {"seeds": len(by_seed)}
        for split in ("seen", "unseen"):
            table[cell][split] = split_kl([r for rs in by_seed.values() for r in rs if r["split"] == split])
            table[cell][split]["kl_new_per_seed"] = {
                s: split_kl([r for r in rs if r["split"] == split])["kl_new"] for s, rs in by_seed.items()}
    Path(args.out).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"{'cell':<22}{'split':<8}{'seeds':>6}{'KL new':>9}{'KL repeat':>11}{'KL all':>8}{'repeat share':>14}")
    for cell, row in table.items():
        for split in ("seen", "unseen"):
            s = row[split]
            print(f"{cell:<22}{split:<8}{row['seeds']:>6}{s['kl_new']:>9.3f}{s['kl_repeat']:>11.3f}"
                  f"{s['kl_all']:>8.3f}{100 * s['repeat_token_share']:>13.1f}%")


if __name__ == "__main__":
    main()
