"""The episode viewer at paper scale: file size, build time, and how long Chromium takes to open it.

Synthesizes one epoch of 128 episodes x 50 turns (about 60 response tokens a turn; ALFWorld-sized
observations and admissible lists) as real `Turn`/`Episode` records, writes them through
`episode_record` (with SmolLM2's tokenizer, as a run does) and `build_html`, then loads the page in
headless Chromium three times: plain (open), `?open=0` (one episode) and `?all=1` (every turn). The
times are the page's own `performance.now()` marks, read from the DOM. Last line: one JSON object.

    python benchmarks/viewer_scale.py [--episodes 128] [--turns 50] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks.episode_log import episode_record  # noqa: E402
from sage.models import load_tokenizer  # noqa: E402
from sage.rollout.records import Episode, Turn  # noqa: E402
from sage.study.view import build_html  # noqa: E402

PLACES = ["cabinet", "countertop", "drawer", "shelf", "sinkbasin", "stoveburner", "fridge", "microwave",
          "garbagecan", "coffeemachine", "diningtable", "toaster"]
OBJECTS = ["mug", "apple", "knife", "plate", "spatula", "egg", "bowl", "potato", "fork", "cup", "pan"]
TASK_TYPES = ["pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place"]


def room(rng: random.Random) -> list[str]:
    return [f"{p} {i}" for p in PLACES for i in range(1, rng.randint(2, 5))]


def synth_turn(rng: random.Random, tok, recs: list[str], step: int, game: str, ttype: str) -> Turn:
    here, obj = rng.choice(recs), rng.choice(OBJECTS)
    if step == 0:
        obs = ("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around "
               "you, you see " + ", ".join(f"a {r}" for r in recs) + f".\n\nYour task is to: put a clean {obj} in {here}.")
    else:
        obs = (f"You arrive at {here}. On the {here}, you see a {obj} {rng.randint(1, 3)}, "
               f"a {rng.choice(OBJECTS)} {rng.randint(1, 3)}, and a {rng.choice(OBJECTS)} {rng.randint(1, 3)}.")
    admissible = [f"go to {r}" for r in recs] + ["inventory", "look", f"examine {here}",
                                                 f"take {obj} 1 from {here}", f"open {here}", f"close {here}"]
    action = rng.choice(admissible)
    text = (f"<think>I need a clean {obj}. The {here} may hold one; if it is not there I will check the "
            f"{rng.choice(PLACES)} next, then clean it at the sinkbasin before putting it in place.</think>"
            f"<action>{action}</action>")
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n = len(ids)
    logp = [-rng.expovariate(2.0) for _ in range(n)]
    tlogp = [-rng.expovariate(1.0) for _ in range(n)]
    return Turn(
        game_id=game, split="train", task_type=ttype, index=step, context_ids=[], response_ids=ids,
        logprobs=logp, response_text=text, action=action, valid_format=True, observation=obs,
        admissible=admissible, feedback=f"You arrive at {rng.choice(recs)}. Nothing happens." if step % 3 else obs,
        done=False, won=False, gate_label=rng.choice(["SKIP", "WEAK", "STRONG"]), gate=0.5,
        gate_probs={"SKIP": 0.2, "WEAK": 0.5, "STRONG": 0.3}, confidence=[rng.random() for _ in range(n)],
        teacher_logprobs=tlogp,
    )


def synth_epoch(n_eps: int, n_turns: int, tok, seed: int = 0) -> list[Episode]:
    rng = random.Random(seed)
    eps = []
    for i in range(n_eps):
        ttype, recs = rng.choice(TASK_TYPES), room(rng)
        turns = [synth_turn(rng, tok, recs, k, f"train/{ttype}/trial_{i:03d}", ttype) for k in range(n_turns)]
        eps.append(Episode(game_id=turns[0].game_id, split="train", task_type=ttype,
                           task=f"put a clean {rng.choice(OBJECTS)} in {rng.choice(recs)}.", turns=turns,
                           won=rng.random() < 0.2))
    return eps


def chromium_attrs(browser: str, url: str, profile: Path) -> tuple[dict, float]:
    """<body> attributes after the page's script ran, and the wall time of the whole browser process."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--dump-dom"]
    t0 = time.perf_counter()
    dom = subprocess.run([browser, *flags, url], capture_output=True, text=True, timeout=600).stdout
    wall = time.perf_counter() - t0
    body = re.search(r"<body([^>]*)>", dom)
    return (dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1))) if body else {}), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=128)
    ap.add_argument("--turns", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None, help="keep the HTML here (default: a temp dir)")
    args = ap.parse_args()
    tok = load_tokenizer("smollm2-135m-instruct")
    eps = synth_epoch(args.episodes, args.turns, tok)
    n_tok = sum(len(t.response_ids) for ep in eps for t in ep.turns) / (args.episodes * args.turns)
    print(f"{args.episodes} episodes x {args.turns} turns, {n_tok:.1f} response tokens per turn")

    t0 = time.perf_counter()
    records = [episode_record(ep, 0, tok) for ep in eps]
    t1 = time.perf_counter()
    page = build_html(records, "viewer_scale benchmark")
    t2 = time.perf_counter()
    jsonl_mb = sum(len(json.dumps(r)) + 1 for r in records) / 1e6
    out = args.out or Path(tempfile.mkdtemp(prefix="viewer_scale_"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "viewer.html"
    path.write_text(page, encoding="utf-8")
    html_mb = path.stat().st_size / 1e6
    print(f"records (episode_record + token decode): {t1 - t0:.2f} s; build_html: {t2 - t1:.2f} s")
    print(f"JSONL {jsonl_mb:.1f} MB; HTML {html_mb:.1f} MB -> {path}")

    result = {"episodes": args.episodes, "turns": args.episodes * args.turns, "html_mb": round(html_mb, 2),
              "build_s": round(t2 - t0, 2), "open_ms": None, "render_all_ms": None}
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("no Chromium installed: open/render times not measured")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            opened, wall = chromium_attrs(browser, path.as_uri(), Path(tmp) / "a")
            one, _ = chromium_attrs(browser, path.as_uri() + "?open=0", Path(tmp) / "b")
            full, wall_all = chromium_attrs(browser, path.as_uri() + "?all=1", Path(tmp) / "c")
        print(f"open: JSON.parse {opened.get('data-parse-ms')} ms, list drawn at {opened.get('data-open-ms')} ms "
              f"after navigation start (browser process {wall:.1f} s incl. startup)")
        print(f"expand one episode: {one.get('data-render-one-ms')} ms; expand all: {full.get('data-render-all-ms')} ms "
              f"({full.get('data-rendered-turns')} turns; process {wall_all:.1f} s)")
        result.update(open_ms=float(opened["data-open-ms"]), parse_ms=float(opened["data-parse-ms"]),
                      render_one_ms=float(one["data-render-one-ms"]),
                      render_all_ms=float(full["data-render-all-ms"]),
                      rendered_turns=int(full["data-rendered-turns"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
