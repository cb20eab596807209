"""The imitation ceiling: alfworld's hand-coded expert on the fixed panels, no model, no noise.

    python -m sage.teacher.expert_panel --out results/teacher/expert.json

The teacher is trained to imitate this expert (`data.source: dagger`), so its success within 30 and 50
turns bounds what imitation can reach at each turn limit. Per split: games won within 30 and within 50
turns, overall and per task type, and the turn count of every win.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from sage.envs import EnvPool, PromptBuilder, PromptTemplate, panel_games
from sage.models import load_tokenizer
from sage.rollout.loop import rollout
from sage.specs import RolloutSpec
from sage.teacher.policy import ExpertMixPolicy, Mix, PeekPool

BASE = Path(__file__).resolve().parents[2] / "configs" / "base.yaml"


def play_panel(split: str, workers: int, data_root: str | None, max_turns: int = 50) -> dict:
    prompt = PromptBuilder(PromptTemplate(**(yaml.safe_load(BASE.read_text())["data"].get("prompt") or {})))
    tok = load_tokenizer("smollm2-135m-instruct")  # the answers are tokenized, as the teacher's would be
    games = panel_games(split, data_root)
    t0 = time.perf_counter()
    with EnvPool(workers, max_steps=max_turns, expert=True) as pool:
        peek = PeekPool(pool)
        policy = ExpertMixPolicy(peek, tok, Mix(), prompt.template.expert_answer, seed=0)
        episodes = rollout(policy, peek, games, prompt, tok, RolloutSpec(), greedy=True)
    by_type: dict[str, dict[str, int]] = {}
    for g, e in zip(games, episodes, strict=True):
        row = by_type.setdefault(g.task_type, {"games": 0, "won_30": 0, "won_50": 0})
        row["games"] += 1
        row["won_30"] += int(e.success and len(e.turns) <= 30)
        row["won_50"] += int(e.success)
    return {
        "games": len(episodes), "errors": sum(e.error is not None for e in episodes),
        "won_30": sum(r["won_30"] for r in by_type.values()), "won_50": sum(r["won_50"] for r in by_type.values()),
        "by_type": by_type, "turns_of_wins": sorted(len(e.turns) for e in episodes if e.success),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=None, help="write the figures here (JSON)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    result = {split: play_panel(split, args.workers, args.data_root) for split in ("valid_seen", "valid_unseen")}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({s: {k: r[k] for k in ("games", "won_30", "won_50")} for s, r in result.items()}))


if __name__ == "__main__":
    main()
