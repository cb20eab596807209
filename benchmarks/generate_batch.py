"""HFGenerator vs transformers' continuous batching (`model.generate_batch`) on one batch of prompts.

The prompts are the first window prompts of real games (what a rollout's first turn generates from);
both sample `--max-new-tokens` tokens per prompt at temperature 1 with no stop string, so both do the
same work. Run one after the other in this process, printed side by side; the last line is one JSON
object.

    python benchmarks/generate_batch.py [--games 16] [--max-new-tokens 32] [--layers 6]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import GenerationConfig

from sage.envs import EnvPool, PromptBuilder, find_games
from sage.models import ModelSpec, load_model, load_tokenizer
from sage.rollout.chat import ChatCodec
from sage.rollout.generation import HFGenerator, SamplingParams


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--games", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layers", type=int, default=6)
    args = p.parse_args()
    tok = load_tokenizer(args.model)
    model = load_model(ModelSpec(args.model, num_layers=args.layers, dtype="float32"), trainable=False)
    games = (find_games("train") + find_games("valid_seen") + find_games("valid_unseen"))[::3][: args.games]
    with EnvPool(num_workers=2, max_steps=4) as pool:
        first = pool.reset(games)
    codec, builder = ChatCodec(tok), PromptBuilder()
    prompts = [codec.prompt_ids(builder.window_messages(r.task, [], r.observation, r.admissible)) for r in first]

    ours = HFGenerator(model, tok, seed=0)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, stop_strings=())
    ours.generate(prompts[:2], params)  # warm-up
    gens, ours_s = timed(lambda: ours.generate(prompts, params))
    ours_tokens = sum(len(g.token_ids) for g in gens)

    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    figures = {"prompts": len(prompts), "prompt_tokens": sum(map(len, prompts)), "max_new_tokens": args.max_new_tokens,
               "threads": torch.get_num_threads(), "ours_s": round(ours_s, 3), "ours_tokens": ours_tokens}
    try:
        model.generate_batch(prompts[:2], generation_config=cfg)  # warm-up
        out, cb_s = timed(lambda: model.generate_batch(prompts, generation_config=cfg))
        figures.update(generate_batch_s=round(cb_s, 3),
                       generate_batch_tokens=sum(len(v.generated_tokens) for v in out.values()),
                       generate_batch_over_ours=round(cb_s / ours_s, 2))
    except Exception as exc:  # an API that changes between transformers versions: report, do not hide
        figures["generate_batch_error"] = f"{type(exc).__name__}: {exc}"[:300]
    print(f"{len(prompts)} prompts ({figures['prompt_tokens']} tokens) x {args.max_new_tokens} sampled tokens, fp32, "
          f"{torch.get_num_threads()} threads")
    print(f"{'HFGenerator':<34}{ours_s:>8.2f} s  {ours_tokens} tokens")
    if "generate_batch_s" in figures:
        print(f"{'transformers generate_batch':<34}{figures['generate_batch_s']:>8.2f} s  "
              f"{figures['generate_batch_tokens']} tokens  ({figures['generate_batch_over_ours']}x ours)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
