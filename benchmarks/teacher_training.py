"""Throughput of the teacher's training step on this machine: tokens/s of LoRA forward+backward+AdamW on
real teacher-data sequences, beside a bf16 matmul probe taken in the same run.

The sequences are those `sage fit --config configs/teacher/smollm2_alfworld.yaml` trains on (transcript
episodes of the hand-coded expert with noise, and judge examples), from the bundled train games; they are
packed into micro-batches by the same `plan_steps` and trained by the same `SageModule.micro_loss`, under
bf16 autocast with the same LoRA settings.

    python benchmarks/teacher_training.py [--games 8] [--steps 4] [--max-tokens 8192]

Counted work: 2 x the forward's FLOPs (`counting.Shape`: linear layers per token, attention per causal
(query, key) pair, the LM head at trained positions only), since a LoRA step computes activation
gradients but no base-weight gradients (the adapters' own FLOPs, 2 x r/hidden of the linear ones, are
left out). Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from counting import Shape, matmul_probe

from sage.distill.judge import TeacherJudge
from sage.envs import EnvPool, PromptBuilder, PromptTemplate, find_games
from sage.module import SageModule
from sage.plan import plan_steps
from sage.samples import transcript_samples
from sage.specs import ConfidenceSpec, GateSpec, LoraSpec, LossSpec, ModelSpec, RolloutSpec
from sage.teacher.policy import Mix
from sage.teacher.rounds import collect_round

BASE = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"
PROMPT = PromptTemplate(**yaml.safe_load(BASE.read_text())["data"]["prompt"])  # the teacher's answer format


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--games", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps timed (after one warm-up step)")
    ap.add_argument("--samples-per-step", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=8192, help="tokens per micro-batch")
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()

    module = SageModule(ModelSpec("smollm2-135m-instruct", lora=LoraSpec(r=args.rank, alpha=2 * args.rank, dropout=0.0)),
                        objective="sft", loss=LossSpec(normalize="opd"), gate=GateSpec(mode="always"),
                        confidence=ConfidenceSpec(kind="none"))
    module.build_models("cpu", "bf16-mixed")
    tok, student = module.tokenizer, module.student
    games = find_games("train", sample=args.games, seed=0)
    judge = TeacherJudge(GateSpec(), student, tok)
    with EnvPool(2, max_steps=50, expert=True) as pool:
        episodes, _ = collect_round(games=games, pool=pool, prompt=PromptBuilder(PROMPT), tokenizer=tok,
                                    rollout_spec=RolloutSpec(context_mode="transcript", max_new_tokens=24),
                                    mix=Mix(random=0.1, invalid=0.05, repeat=0.05), answer=PROMPT.expert_answer,
                                    judge=judge, judge_examples=args.games, model=student, seed=0, games_per_rollout=None)
    samples = transcript_samples(episodes)
    steps = plan_steps(samples * 8, args.samples_per_step, args.max_tokens, tok.pad_token_id, "opd", seed=0)
    need = args.steps + 1
    if len(steps) < need:
        raise SystemExit(f"only {len(steps)} optimizer steps of data; raise --games")
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    shape = Shape(student.config)
    student.train()

    def step(s) -> tuple[int, float]:
        real, flops = 0, 0.0
        for mb in s.micro_batches:
            t = mb.tokens
            if t is None:  # a DDP padding slot: none on one process
                continue
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = module.micro_loss(t, mb.denominator)
            loss.backward()
            lengths = t.attention_mask.sum(1).tolist()
            real += sum(lengths)
            attended = sum(n * (n + 1) / 2 for n in lengths)
            flops += 2 * shape.flops(sum(lengths), attended, int(t.loss_mask.sum()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        return real, flops

    step(steps[0])  # warm-up
    probe_before = matmul_probe(torch.bfloat16, 2048)
    t0, tokens, flops = time.perf_counter(), 0, 0.0
    for s in steps[1:need]:
        n, f = step(s)
        tokens, flops = tokens + n, flops + f
    seconds = time.perf_counter() - t0
    probe = max(probe_before, matmul_probe(torch.bfloat16, 2048))
    figures = {
        "tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
        "gflop_per_s": round(flops / seconds / 1e9, 1), "bf16_probe_gflop_per_s": round(probe / 1e9, 1),
        "share_of_probe": round(flops / seconds / probe, 3), "optimizer_steps": args.steps,
        "samples_per_step": args.samples_per_step, "max_tokens_per_micro_batch": args.max_tokens,
        "lora_rank": args.rank, "threads": torch.get_num_threads(),
    }
    print(f"{tokens} tokens in {seconds:.1f} s: {figures['tokens_per_s']} tokens/s, {figures['gflop_per_s']} GFLOP/s "
          f"counted = {figures['share_of_probe']:.1%} of the bf16 matmul probe ({figures['bf16_probe_gflop_per_s']} GFLOP/s)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
