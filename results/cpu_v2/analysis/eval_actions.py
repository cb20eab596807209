"""What does a student do in evaluation? Its greedy actions, replayed in the real games and classified.

SFT on expert trajectories leaves the loops the distilled cells fall into, but its actions are rarely
admissible. Its walkthroughs come from ALFWorld's hand-coded expert, which knows where every object is and
goes straight to it; the hypothesis is that a student imitating them acts as if it knew too. This script
tests that on the committed per-game records (`runs/<cell>/seed_<S>/eval_games.jsonl` of runs validated after
the records gained `actions`): it replays each game's actions in the real engine (no model) and counts, per
run and split, the verbs used and how often each was admissible, and why each inadmissible action failed:

- go_here: "go to" the place the agent already is (how a greedy loop looks from inside);
- go_absent: "go to" a place no observation so far has named: one not in this room, since the first
  observation names every place in it;
- object_unseen: take/move/heat/... an object no observation so far has named (acting as if it knew);
- object_named: take/move/heat/... a named object, but not from here or not held;
- unparsed: no action in the answer ("" was sent); other: anything else.

The expert's own walkthroughs on the same panel games are the reference row `walkthrough`. The replay checks
itself: each turn's admissibility must equal the record's (`replay_mismatches`). Replaying costs ~5 CPU
minutes per run (each game's reset translates its PDDL), so each run's counts are kept in the output with
the digest of the file they came from (and the rules' VERSION) and reused while both are unchanged; the pooled
table is recomputed every time.

    ALFWORLD_DATA=~/alfw python results/cpu_v2/analysis/eval_actions.py [--out .../eval_actions.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

from sage.envs import panel_games, walkthrough
from sage.envs.alfworld_env import AlfworldEnv
from sage.study.eval_games import game_records

HERE = Path(__file__).resolve().parent
RUNS = HERE.parent / "runs"
SPLITS = {"seen": "valid_seen", "unseen": "valid_unseen"}
VERBS = ("go", "take", "move", "open", "close", "heat", "cool", "clean", "slice", "use", "examine",
         "look", "inventory")
# Verbs whose first argument is an object the agent must be able to reach: "take X from Y", "heat X with Y".
OBJECT_VERBS = {"take": " from ", "move": " to ", "heat": " with ", "cool": " with ", "clean": " with ",
                "slice": " with "}
VERSION = 1  # of the classification: bump it when a rule changes, and every run is replayed again
KINDS = ("go_here", "go_absent", "object_unseen", "object_named", "unparsed", "other")


def verb_of(action: str) -> str:
    """The action's verb, "unparsed" for an empty answer and "other" for anything else."""
    if not action:
        return "unparsed"
    word = action.split()[0]
    return word if word in VERBS else "other"


def handled_object(action: str) -> str | None:
    """The object an object verb acts on ("mug 1" of "take mug 1 from countertop 2"), else None."""
    word = action.split(" ", 1)[0] if action else ""
    sep = OBJECT_VERBS.get(word)
    if sep is None or sep not in action:
        return None
    return action[len(word) + 1:].split(sep, 1)[0].strip() or None


def named(thing: str, shown: str) -> bool:
    """Whether an observation named this place or object as a whole ("countertop 1" is not in "countertop 10")."""
    return re.search(rf"(?<![\w]){re.escape(thing)}(?![\w])", shown) is not None


def go_target(action: str) -> str | None:
    """The place a "go to" action names, else None."""
    return action[len("go to "):] if action.startswith("go to ") else None


def failure_kind(action: str, here: str | None, shown: str) -> str:
    """Why an inadmissible action failed (KINDS), given the agent's place and every observation so far."""
    if not action:
        return "unparsed"
    target = go_target(action)
    if target is not None:
        return "go_here" if target == here else "go_absent" if not named(target, shown) else "other"
    obj = handled_object(action)
    if obj is not None:
        return "object_named" if named(obj, shown) else "object_unseen"
    return "other"


def replay(env: AlfworldEnv, game, actions: list[str]) -> list[tuple[str, bool, str | None]]:
    """(verb, admissible, failure kind or None) for each turn of the game replayed with these actions."""
    res = env.reset(game)
    shown, here = res.observation.lower(), None
    turns = []
    for action in actions:
        ok = action in res.admissible
        turns.append((verb_of(action), ok, None if ok else failure_kind(action, here, shown)))
        if res.done:
            break
        if ok and go_target(action) is not None:
            here = go_target(action)
        res = env.step(action)  # "" as the rollout sent it: "Nothing happens."
        shown += "\n" + res.observation.lower()
    return turns


def counts(turns) -> dict:
    """Raw counts (they pool over seeds by addition): turns, admissible, verb -> [turns, admissible], kinds."""
    verbs: dict[str, list[int]] = {}
    for verb, ok, _ in turns:
        row = verbs.setdefault(verb, [0, 0])
        row[0] += 1
        row[1] += ok
    kinds = Counter(k for _, _, k in turns if k)
    return {"turns": len(turns), "admissible": sum(ok for _, ok, _ in turns),
            "verbs": dict(sorted(verbs.items())), "inadmissible": {k: kinds[k] for k in KINDS}}


def pooled(rows: list[dict]) -> dict:
    """Rates from summed counts: admissible, verb share and verb admissible rate (of turns), and each failure
    kind's share of the inadmissible turns."""
    n = sum(r["turns"] for r in rows)
    ok = sum(r["admissible"] for r in rows)
    verbs: dict[str, list[int]] = {}
    for r in rows:
        for v, (c, a) in r["verbs"].items():
            verbs.setdefault(v, [0, 0])
            verbs[v][0] += c
            verbs[v][1] += a
    bad = n - ok
    return {
        "turns": n,
        "admissible": round(ok / n, 4),
        "verb_share": {v: round(c / n, 4) for v, (c, _) in sorted(verbs.items())},
        "verb_admissible": {v: round(a / c, 4) for v, (c, a) in sorted(verbs.items())},
        "inadmissible_kind": {k: round(sum(r["inadmissible"][k] for r in rows) / bad, 4) if bad else None
                              for k in KINDS},
    }


def digest(path: Path) -> str:
    """A file's sha256: a run's counts are reused while its records are unchanged."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "eval_actions.json"))
    args = ap.parse_args()
    out = Path(args.out)
    old = json.loads(out.read_text())["runs"] if out.is_file() else {}
    games = {key: {g.game_id: g for g in panel_games(split)} for key, split in SPLITS.items()}
    env = AlfworldEnv(max_steps=50, expert=False)
    runs: dict[str, dict] = {}
    panels = hashlib.sha256(json.dumps({k: sorted(v) for k, v in games.items()}).encode()).hexdigest()
    walk_key = f"v{VERSION}:{panels}"  # the walkthrough row depends only on the panels and the rules
    for f in sorted(RUNS.glob("*/seed_*/eval_games.jsonl")):
        records = [r for r in game_records([f]) if "actions" in r]
        if not records:
            continue
        name, key = f"{f.parent.parent.name}/{f.parent.name}", f"v{VERSION}:{digest(f)}"
        if old.get(name, {}).get("digest") == key:
            runs[name] = old[name]
            continue
        entry = {"digest": key, "replay_mismatches": 0}
        for split in SPLITS:
            turns = []
            for r in (r for r in records if r["split"] == split):
                played = replay(env, games[split][r["game_id"]], r["actions"])
                flags = r["admissible"]  # a replay that ends early or late counts its extra turns as mismatches
                entry["replay_mismatches"] += abs(len(played) - len(flags)) + sum(
                    t[1] != bool(a) for t, a in zip(played, flags, strict=False))
                turns += played
            entry[split] = counts(turns)
        runs[name] = entry
        print(f"replayed {name}")
    if old.get("walkthrough", {}).get("digest") == walk_key:
        runs["walkthrough"] = old["walkthrough"]
    else:
        runs["walkthrough"] = {"digest": walk_key, "replay_mismatches": 0, **{
            split: counts([t for g in by_id.values() for t in replay(env, g, walkthrough(g))])
            for split, by_id in games.items()}}
    env.close()
    cells: dict[str, dict] = {}
    for name, entry in runs.items():
        cells.setdefault(name.split("/")[0], []).append(entry)
    table = {cell: {"runs": len(rows), "replay_mismatches": sum(r["replay_mismatches"] for r in rows),
                    **{split: pooled([r[split] for r in rows]) for split in SPLITS}}
             for cell, rows in sorted(cells.items())}
    out.write_text(json.dumps({"cells": table, "runs": dict(sorted(runs.items()))}, indent=1, sort_keys=True) + "\n")
    print(f"{'cell':<20}{'split':<7}{'runs':>5}{'turns':>6}{'admiss.':>8}  verbs (share/admissible) | "
          "inadmissible turns by kind")
    for cell, row in table.items():
        for split in SPLITS:
            s = row[split]
            verbs = " ".join(f"{v} {s['verb_share'][v]:.2f}/{s['verb_admissible'][v]:.2f}"
                             for v in sorted(s["verb_share"], key=lambda v: -s["verb_share"][v])[:4])
            kinds = " ".join(f"{k} {v:.2f}" for k, v in s["inadmissible_kind"].items() if v)
            print(f"{cell:<20}{split:<7}{row['runs']:>5}{s['turns']:>6}{s['admissible']:>8.3f}  {verbs} | {kinds}")


if __name__ == "__main__":
    main()
