"""Evaluation figures re-computed from per-game records (`eval_games.jsonl`, `callbacks.evaluation`).

A greedy run with a turn limit of 50 plays, in its first N turns, exactly what a run limited to N plays
(no prompt mentions the limit, and the batch of live games is the same until turn N), so one 50-turn
run gives the 30-turn figures too: a game counts as won at N if it was won within N turns, and the
turn-level rates count its first N turns (the reverse KL: their tokens).

    python -m sage.study.eval_games RUN/eval_games.jsonl --max-turns 30 [--out figures.json]
    python -m sage.study.eval_games RUN/eval_games.jsonl --same-games OTHER/eval_games.jsonl

`--same-games` keeps only the games (split, game id) another evaluation played: e.g. a whole-panel
evaluation's figures on the half panels a mid-training evaluation used, for a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sage.envs import TASK_TYPES


def summarize(records: list[dict], max_turns: int | None = None) -> dict:
    """``eval_results.json``'s ``success``, ``games`` and ``turn_rates`` for the records, counting only
    each game's first ``max_turns`` turns (None: all of them)."""
    success: dict[str, dict] = {}
    games: dict[str, dict] = {}
    rates: dict[str, dict] = {}
    for split in sorted({r["split"] for r in records}):
        rows = [r for r in records if r["split"] == split]
        n = max_turns or max((r["turns"] for r in rows), default=0)
        won = {id(r): r["won"] and r["turns"] <= n for r in rows}
        success[split], games[split] = {}, {}
        for key in [*TASK_TYPES, "overall"]:
            sel = [r for r in rows if key in ("overall", r["task_type"])]
            games[split][key] = len(sel)
            success[split][key] = sum(won[id(r)] for r in sel) / len(sel) if sel else None
        adm = [a for r in rows for a in r["admissible"][:n]]
        par = [p for r in rows for p in r["parsed"][:n]]
        rep = [x for r in rows for x in (r.get("repeat") or [])[:n]]  # older records have none
        kl = sum(sum(r["kl"][:n]) for r in rows if r.get("kl") is not None)
        tokens = sum(sum(r["kl_tokens"][:n]) for r in rows if r.get("kl") is not None)
        rates[split] = {"turns": len(adm), "admissible_rate": sum(adm) / len(adm) if adm else None,
                        "format_rate": sum(par) / len(par) if par else None,
                        "repeat_rate": sum(rep) / len(rep) if rep else None,
                        "kl_tokens": tokens, "reverse_kl": kl / tokens if tokens else None}
    return {"max_turns": max_turns, "success": success, "games": games, "turn_rates": rates}


def kl_by_repeat(record: dict) -> dict[str, tuple[float, int]]:
    """One scored game's reverse KL split by turn kind: {"new": (KL sum, tokens), "repeat": (KL sum, tokens)},
    "repeat" holding the turns that repeat the previous action (a loop makes both models' next tokens easy)."""
    out = {"new": (0.0, 0), "repeat": (0.0, 0)}
    for kl, n, rep in zip(record["kl"], record["kl_tokens"], record["repeat"], strict=True):
        key = "repeat" if rep else "new"
        out[key] = (out[key][0] + kl, out[key][1] + n)
    return out


def read(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


RECORD_KEYS = frozenset({"split", "game_id", "task_type", "won", "turns", "admissible", "parsed"})


def game_records(paths) -> list[dict]:
    """The per-game records of these files, in order; lines without a record's fields (an older or a foreign
    file) are left out."""
    return [r for p in paths for r in read(p) if r.keys() >= RECORD_KEYS]


def same_games(records: list[dict], other: list[dict]) -> list[dict]:
    """The records of the games (split, game id) that `other` also has."""
    keep = {(r["split"], r["game_id"]) for r in other}
    return [r for r in records if (r["split"], r["game_id"]) in keep]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("games", help="an eval_games.jsonl written by sage validate")
    ap.add_argument("--max-turns", type=int, default=None, help="count only each game's first N turns")
    ap.add_argument("--same-games", default=None, metavar="JSONL",
                    help="count only the games (split, game id) this other eval_games.jsonl has")
    ap.add_argument("--out", default=None, help="write the figures here (JSON)")
    args = ap.parse_args(argv)
    if args.max_turns is not None and args.max_turns < 1:
        ap.error(f"--max-turns must be >= 1, got {args.max_turns}")
    for path in (args.games, args.same_games):
        if path is not None and not Path(path).is_file():
            ap.error(f"no such file: {path}")
    records = read(args.games)
    if args.same_games is not None:
        records = same_games(records, read(args.same_games))
        if not records:
            ap.error(f"--same-games={args.same_games}: none of its games is in {args.games}")
    figures = summarize(records, args.max_turns)
    text = json.dumps(figures, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
