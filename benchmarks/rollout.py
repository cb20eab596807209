"""Rollout throughput: our batched loop (window and transcript modes) vs a plain per-game loop, with each
installed rollout engine (hf: `HFGenerator`; vllm: the colocated `vllm.LLM`, `sage.rollout.vllm_engine`).

Every game plays exactly `--turns` turns (the environment's step limit), so all three variants do the
same amount of work; they run one after another in this process and are printed side by side as
ratios. Also reported: the share of time in generation vs the environment, the generator's achieved
FLOP/s (from counted FLOPs) against a matmul probe measured in the same run (same dtype and threads),
the bytes that cross between host and device per decode step, the rows run per generated token, and
the memory traffic of decode steps (weights + attended keys/values) against a copy probe.

    python benchmarks/rollout.py --games 16 --turns 4 --model smollm2-135m-instruct --layers 6
    python benchmarks/rollout.py --games 16 --turns 12 --precision bf16-mixed
    python benchmarks/rollout.py --games 16 --turns 4 --engines hf,vllm --skip-plain   # the engines side by side
The vllm engine is started (and given the weights) before its rows are timed; it samples with its own
random stream, so its responses (and token counts) differ: compare turns/s and generated tokens/s.
The last line is one JSON object with the figures (compare runs with it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from types import SimpleNamespace

import torch
from counting import Shape, matmul_probe

from sage.envs import EnvPool, PromptBuilder, find_games, parse_action
from sage.models import ModelSpec, load_model, load_tokenizer
from sage.rollout.chat import ChatCodec
from sage.rollout.engines import make_generator, vllm_installed
from sage.rollout.loop import rollout
from sage.specs import RolloutSpec

# Qwen2.5-1.5B's published shape: the same counted work priced at a real student's proportions, where a
# token's linear layers cost far more than its attention over the history
QWEN25_15B = SimpleNamespace(hidden_size=1536, num_hidden_layers=28, vocab_size=151936, num_attention_heads=12,
                             num_key_value_heads=2, head_dim=128, intermediate_size=8960)
PRECISIONS = {"32-true": (torch.float32, False), "bf16-mixed": (torch.bfloat16, True), "bf16-true": (torch.bfloat16, False)}


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


def flops(config, stats: dict) -> float:
    """Useful FLOPs of the counted work (padding not counted; `counting.Shape`): the linear layers on every
    real token, attention over every attended key column, the LM head on each generated token."""
    return Shape(config).flops(stats["prefill_tokens"] + stats["decode_row_steps"],
                               stats["prefill_attended"] + stats["decode_attended"], stats["generated_tokens"])


def decode_bytes(config, stats: dict, elem: int) -> float:
    """Bytes a decode step must read from memory at least: every weight once per step (linear layers and
    the LM head) and, per row, the keys and values of every attended column in every layer."""
    shape = Shape(config)
    return elem * (shape.weight_elems * stats["decode_steps"] + shape.kv_elems * stats["decode_attended"])


def bandwidth_probe(mb: int = 512, repeats: int = 8) -> float:
    """GB/s of a large tensor copy (bytes read + written) with this process's threads."""
    a = torch.empty(mb * 2**20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    t = time.perf_counter()
    for _ in range(repeats):
        b.copy_(a)
    return 2 * a.numel() * 4 * repeats / (time.perf_counter() - t) / 1e9


def ours(mode, model, tok, pool, games, args, ctx, engine="hf"):
    cfg = RolloutSpec(context_mode=mode, max_new_tokens=args.max_new_tokens, max_context_tokens=8192)
    inner = make_generator(engine, model, tok, seed=0, max_model_len=cfg.max_context_tokens)
    gen = Timed(inner, ["generate"])
    env = Timed(pool, ["reset", "step"])
    t = time.perf_counter()
    with ctx():
        eps = rollout(gen, env, games, PromptBuilder(), tok, cfg)
    total = time.perf_counter() - t
    turns = sum(e.length for e in eps)
    if mode == "window":
        scored = sum(len(x.context_ids) + len(x.response_ids) for e in eps for x in e.turns)
    else:
        scored = sum(len(e.sequence_ids) for e in eps)
    stats = inner.stats.as_dict()
    row = {"turns": turns, "seconds": total, "gen": gen.seconds, "env": env.seconds,
           "scored_tokens_per_episode": scored / len(eps), "stats": stats,
           "tokens_per_s": stats["generated_tokens"] / total}
    if engine == "hf":  # counted work: only the hf engine counts its prefill/decode positions
        row["gflops"] = flops(model.config, stats) / gen.seconds / 1e9
        row["decode_gbps"] = decode_bytes(model.config, stats, args.elem) / stats["decode_seconds"] / 1e9
    return row


@torch.no_grad()
def plain(model, tok, pool, games, args, ctx):
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
            ids = codec.prompt_ids(prompt.window_messages(r.task, history[i][-2:], r.observation, r.admissible,
                                                          step=len(history[i])))
            g0 = time.perf_counter()
            with ctx():
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
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="32-true",
                   help="32-true: fp32; bf16-mixed: fp32 weights under bf16 autocast (the trainer's "
                        "bf16-mixed); bf16-true: bf16 weights")
    p.add_argument("--skip-plain", action="store_true", help="leave out the per-game baseline (ratios then absent)")
    p.add_argument("--engines", default="auto",
                   help="comma-separated rollout engines to time (hf, vllm); auto: hf, and vllm when installed")
    args = p.parse_args()
    engines = ["hf", "vllm"] if args.engines == "auto" and vllm_installed() else (
        ["hf"] if args.engines == "auto" else args.engines.split(","))
    if "hf" not in engines or any(e not in ("hf", "vllm") for e in engines):
        p.error(f"--engines={args.engines!r}: a comma-separated list of hf and vllm that includes hf")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype, autocast = PRECISIONS[args.precision]
    tok = load_tokenizer(args.model)
    weights = "float32" if dtype == torch.float32 or autocast else "bfloat16"
    # trainable: the student's weights require grad, so autocast caches their bf16 casts during a rollout
    model = load_model(ModelSpec(args.model, num_layers=args.layers, dtype=weights), trainable=True).eval()

    def ctx():
        return torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    games = (find_games("train") + find_games("valid_seen") + find_games("valid_unseen"))[:: 3][: args.games]
    probe, bandwidth = matmul_probe(dtype, 2048) / 1e9, bandwidth_probe()  # GFLOP/s
    args.elem = torch.finfo(dtype).bits // 8  # compute dtype: autocast reads bf16 copies of the weights
    print(f"{len(games)} games x {args.turns} turns, {args.model} ({args.layers} layers), precision={args.precision}, "
          f"max_new_tokens={args.max_new_tokens}, torch threads={torch.get_num_threads()}, env workers={args.workers}, "
          f"matmul probe {probe:.0f} GFLOP/s ({dtype}), copy probe {bandwidth:.1f} GB/s")
    with EnvPool(num_workers=args.workers, max_steps=args.turns) as pool:
        pool.reset(games[:1])  # start the workers before timing
        rows = {}
        if not args.skip_plain:
            rows["plain per-game generate"] = plain(model, tok, pool, games, args, ctx)
        rows["ours, window"] = ours("window", model, tok, pool, games, args, ctx)
        rows["ours, transcript"] = ours("transcript", model, tok, pool, games, args, ctx)
        if "vllm" in engines:
            t = time.perf_counter()
            make_generator("vllm", model, tok, max_model_len=8192)  # start the engine outside the timed rows
            started = time.perf_counter() - t
            rows["vllm, window"] = ours("window", model, tok, pool, games, args, ctx, engine="vllm")
            rows["vllm, transcript"] = ours("transcript", model, tok, pool, games, args, ctx, engine="vllm")
    base = rows["plain per-game generate"]["turns"] / rows["plain per-game generate"]["seconds"] if not args.skip_plain else None
    hf_tps = {m: rows[f"ours, {m}"]["turns"] / rows[f"ours, {m}"]["seconds"] for m in ("window", "transcript")}
    print(f"\n{'variant':<26}{'turns':>7}{'s':>9}{'turns/s':>10}{'x plain':>9}{'x hf':>7}{'tokens/s':>10}{'gen %':>8}"
          f"{'env %':>8}{'GFLOP/s':>9}{'of probe':>10}{'teacher tokens/episode':>24}")
    for name, r in rows.items():
        tps = r["turns"] / r["seconds"]
        ratio = f"{tps / base:>9.2f}" if base else f"{'-':>9}"
        mode = name.split(", ")[-1]
        vs_hf = f"{tps / hf_tps[mode]:>7.2f}" if mode in hf_tps else f"{'-':>7}"
        tok_s = f"{r['tokens_per_s']:>10.1f}" if "tokens_per_s" in r else f"{'-':>10}"
        gf = r.get("gflops")
        gfs = f"{gf:>9.1f}{gf / probe:>10.2f}" if gf else f"{'-':>9}{'-':>10}"
        print(f"{name:<26}{r['turns']:>7}{r['seconds']:>9.1f}{tps:>10.2f}{ratio}{vs_hf}{tok_s}"
              f"{100 * r['gen'] / r['seconds']:>8.0f}{100 * r['env'] / r['seconds']:>8.0f}{gfs}"
              f"{r['scored_tokens_per_episode']:>24.0f}")
    engine_figures = {}
    for name, r in rows.items():
        if name.startswith(("ours", "vllm")):
            key = name.replace("ours", "hf").replace(", ", "_")
            engine_figures[f"{key}_turns_per_s"] = round(r["turns"] / r["seconds"], 3)
            engine_figures[f"{key}_tokens_per_s"] = round(r["tokens_per_s"], 1)
    if "vllm" in engines:
        engine_figures["vllm_start_s"] = round(started, 1)
        for m in ("window", "transcript"):
            engine_figures[f"vllm_x_hf_{m}"] = round(engine_figures[f"vllm_{m}_turns_per_s"] / hf_tps[m], 3)
    ours_rows = [rows["ours, window"], rows["ours, transcript"]]
    st = [r["stats"] for r in ours_rows]
    total_flops = sum(flops(model.config, s) for s in st)
    gen_s = sum(r["gen"] for r in ours_rows)
    steps = sum(s["decode_steps"] + 1 for s in st)  # + the first token of each call, picked after the prefill
    figures = {
        "games": len(games), "turns": args.turns, "dtype": args.precision,
        "plain_turns_per_s": round(base, 3) if base else None,
        "window_x_plain": round(rows["ours, window"]["turns"] / rows["ours, window"]["seconds"] / base, 3) if base else None,
        "transcript_x_plain": round(rows["ours, transcript"]["turns"] / rows["ours, transcript"]["seconds"] / base, 3)
        if base else None,
        "gen_gflops": round(total_flops / gen_s / 1e9, 1),
        "gen_gflops_window": round(ours_rows[0]["gflops"], 1),
        "gen_gflops_transcript": round(ours_rows[1]["gflops"], 1),
        "matmul_probe_gflops": round(probe, 1),
        "gen_fraction_of_probe": round(total_flops / gen_s / 1e9 / probe, 3),
        "host_bytes_per_decode_step": round(sum(s["host_bytes"] for s in st) / steps, 1),
        "decode_row_steps_per_token": round(sum(s["decode_row_steps"] for s in st)
                                            / sum(s["generated_tokens"] for s in st), 3),
        "prefill_padding_share": round(1 - sum(s["prefill_tokens"] for s in st) / sum(s["prefill_padded"] for s in st), 3),
        "copy_probe_gb_per_s": round(bandwidth, 1),
        **{f"{k}_{m}": round(v, 2) for m, r in zip(("window", "transcript"), ours_rows, strict=True)
           for k, v in (("prefill_s", r["stats"]["prefill_seconds"]), ("decode_s", r["stats"]["decode_seconds"]),
                        ("decode_gb_per_s", r["decode_gbps"]))},
        "decode_attended_per_row_step_window": round(st[0]["decode_attended"] / st[0]["decode_row_steps"], 1),
        "decode_attended_per_row_step_transcript": round(st[1]["decode_attended"] / st[1]["decode_row_steps"], 1),
        # transcript's counted FLOPs over window's at this run's token counts: for this model and for
        # a Qwen2.5-1.5B-shaped one (attention over the history weighs far less next to wider layers)
        "transcript_flops_over_window": round(flops(model.config, st[1]) / flops(model.config, st[0]), 3),
        "transcript_flops_over_window_qwen2.5_1.5b": round(flops(QWEN25_15B, st[1]) / flops(QWEN25_15B, st[0]), 3),
        "threads": torch.get_num_threads(),
        **engine_figures,
    }
    print(f"\nhost bytes per decode step {figures['host_bytes_per_decode_step']} (<= 64 x {len(games)} games = "
          f"{64 * len(games)}), decode row-steps per generated token {figures['decode_row_steps_per_token']}, "
          f"prefill padding {100 * figures['prefill_padding_share']:.1f}%")
    for m in ("window", "transcript"):
        print(f"{m}: prefill {figures[f'prefill_s_{m}']} s, decode {figures[f'decode_s_{m}']} s, decode reads "
              f"{figures[f'decode_gb_per_s_{m}']} GB/s (copy probe {figures['copy_probe_gb_per_s']} GB/s), "
              f"{figures[f'decode_attended_per_row_step_{m}']} key columns per decode row")
    print(f"transcript's counted FLOPs / window's: {figures['transcript_flops_over_window']} for this model, "
          f"{figures['transcript_flops_over_window_qwen2.5_1.5b']} at Qwen2.5-1.5B's shape (same tokens)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
