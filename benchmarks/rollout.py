"""Rollout throughput: our batched loop (window and transcript modes) vs a plain per-game loop.

Every game plays exactly `--turns` turns (the environment's step limit), so all three variants
do the same amount of work; they run one after another in this process and are printed side by
side as ratios. Also reported: the share of time in generation vs the environment, and the tokens
the teacher must score per episode in each mode (window: every turn's full prompt; transcript: the
episode sequence once).

    python benchmarks/rollout.py --games 16 --turns 4 --model smollm2-135m-instruct --layers 6
"""

from __future__ import annotations

import argparse
import time

import torch

from sage.envs import EnvPool, PromptBuilder, find_games, parse_action
from sage.models import ModelSpec, load_model, load_tokenizer
from sage.rollout.chat import ChatCodec
from sage.rollout.generation import HFGenerator
from sage.rollout.loop import RolloutConfig, rollout


class Timed:
    """Wraps an object and adds the wall time of the named methods to `seconds`."""

    def __init__(self, inner, methods):
        self.inner, self.methods, self.seconds = inner, set(methods), 0.0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in self.methods:
            return attr

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return attr(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t

        return timed


def ours(mode, model, tok, pool, games, args):
    cfg = RolloutConfig(context_mode=mode, max_new_tokens=args.max_new_tokens, max_context_tokens=8192)
    gen = Timed(HFGenerator(model, tok, seed=0), ["generate"])
    env = Timed(pool, ["reset", "step"])
    t = time.perf_counter()
    eps = rollout(gen, env, games, PromptBuilder(), tok, cfg)
    total = time.perf_counter() - t
    turns = sum(e.length for e in eps)
    if mode == "window":
        scored = sum(len(x.context_ids) + len(x.response_ids) for e in eps for x in e.turns)
    else:
        scored = sum(len(e.sequence_ids) for e in eps)
    return {"turns": turns, "seconds": total, "gen": gen.seconds, "env": env.seconds,
            "scored_tokens_per_episode": scored / len(eps)}


@torch.no_grad()
def plain(model, tok, pool, games, args):
    """What a first implementation does: one `generate` call per game per turn on the full prompt."""
    codec, prompt = ChatCodec(tok), PromptBuilder()
    env = Timed(pool, ["reset", "step"])
    t = time.perf_counter()
    gen_s, turns = 0.0, 0
    results = env.reset(games)
    history = [[] for _ in games]
    done = [r.done for r in results]
    torch.manual_seed(0)
    while not all(done):
        actions = [None] * len(games)
        for i, r in enumerate(results):
            if done[i]:
                continue
            ids = codec.prompt_ids(prompt.window_messages(r.task, history[i], r.observation, r.admissible))
            g0 = time.perf_counter()
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 max_new_tokens=args.max_new_tokens, stop_strings=["</action>"], tokenizer=tok,
                                 pad_token_id=tok.pad_token_id)
            gen_s += time.perf_counter() - g0
            actions[i] = parse_action(tok.decode(out[0, len(ids):], skip_special_tokens=True)).action
            history[i].append((r.observation, actions[i]))
            turns += 1
        stepped = env.step(actions)
        for i, s in enumerate(stepped):
            if s is not None:
                results[i], done[i] = s, s.done
    return {"turns": turns, "seconds": time.perf_counter() - t, "gen": gen_s, "env": env.seconds,
            "scored_tokens_per_episode": float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--games", type=int, default=16)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layers", type=int, default=6, help="keep the first N decoder layers (None: all)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    model = load_model(ModelSpec(args.model, num_layers=args.layers), trainable=False)
    games = (find_games("train") + find_games("valid_seen") + find_games("valid_unseen"))[:: 3][: args.games]
    print(f"{len(games)} games x {args.turns} turns, {args.model} ({args.layers} layers), "
          f"max_new_tokens={args.max_new_tokens}, torch threads={torch.get_num_threads()}, env workers={args.workers}")
    with EnvPool(num_workers=args.workers, max_steps=args.turns) as pool:
        pool.reset(games[:1])  # start the workers before timing
        rows = {
            "plain per-game generate": plain(model, tok, pool, games, args),
            "ours, window": ours("window", model, tok, pool, games, args),
            "ours, transcript": ours("transcript", model, tok, pool, games, args),
        }
    base = rows["plain per-game generate"]["turns"] / rows["plain per-game generate"]["seconds"]
    print(f"\n{'variant':<26}{'turns':>7}{'s':>9}{'turns/s':>10}{'x plain':>9}{'gen %':>8}{'env %':>8}"
          f"{'teacher tokens/episode':>24}")
    for name, r in rows.items():
        tps = r["turns"] / r["seconds"]
        print(f"{name:<26}{r['turns']:>7}{r['seconds']:>9.1f}{tps:>10.2f}{tps / base:>9.2f}"
              f"{100 * r['gen'] / r['seconds']:>8.0f}{100 * r['env'] / r['seconds']:>8.0f}"
              f"{r['scored_tokens_per_episode']:>24.0f}")


if __name__ == "__main__":
    main()
