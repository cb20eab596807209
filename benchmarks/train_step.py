"""Where an on-policy training epoch spends its time: rollout, judge, teacher scoring, and the
training step (teacher forward, student forward + backward), with tokens per second, in one run.

    python benchmarks/train_step.py --games 8 --turns 4 --student-layers 6
"""

from __future__ import annotations

import argparse
import time

import torch

from sage.batching import build_steps, flatten_steps, transcript_samples, window_samples
from sage.envs import EnvPool, PromptBuilder, find_games
from sage.models import ModelSpec
from sage.module import SageModule, masked_logits
from sage.rollout.generation import HFGenerator
from sage.rollout.loop import RolloutConfig, rollout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--games", type=int, default=8)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--student-layers", type=int, default=6)
    p.add_argument("--mode", choices=["window", "transcript"], default="window")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--micro-tokens", type=int, default=4096)
    args = p.parse_args()

    module = SageModule(student=ModelSpec(args.model, num_layers=args.student_layers),
                        teacher=ModelSpec(args.model))
    tok = module.tokenizer
    games = find_games("train", sample=args.games, seed=0)
    cfg = RolloutConfig(context_mode=args.mode, max_new_tokens=args.max_new_tokens)
    times: dict[str, float] = {}

    with EnvPool(num_workers=2, max_steps=args.turns) as pool:
        pool.reset(games[:1])
        t = time.perf_counter()
        module.student.eval()
        episodes = rollout(HFGenerator(module.student, tok), pool, games, PromptBuilder(), tok, cfg)
        module.student.train()
        times["rollout"] = time.perf_counter() - t

    from sage.distill.judge import TurnJudge
    from sage.distill.teacher import TeacherScorer

    t = time.perf_counter()
    g = module.gate_spec
    TurnJudge(mode=g.mode, labels=g.labels, model=module.teacher, tokenizer=tok).judge(episodes)
    times["judge"] = time.perf_counter() - t
    t = time.perf_counter()
    scorer = TeacherScorer(module.teacher, vocab_rows=module.vocab_rows)
    if args.mode == "transcript":
        scorer.score_episodes(episodes)
    else:
        scorer.score_turns([x for e in episodes for x in e.turns])
    times["teacher scoring (kappa)"] = time.perf_counter() - t

    for ep in episodes:  # time the step on every turn, whatever the judge said
        for x in ep.turns:
            x.gate = 1.0
    samples = transcript_samples(episodes) if args.mode == "transcript" else window_samples(episodes)
    steps = build_steps(samples, len(samples), args.micro_tokens, tok.pad_token_id, seed=0)
    items = flatten_steps(steps, [s.denominator("weighted") for s in steps], [len(s.micro_batches) for s in steps])
    teacher_s = student_s = 0.0
    tokens = 0
    for item in items:
        if "input_ids" not in item:
            continue
        pred = item["loss_mask"][:, 1:]
        tokens += int(pred.sum())
        t = time.perf_counter()
        with torch.no_grad():
            masked_logits(module.teacher, item["input_ids"], item["attention_mask"], pred)
        teacher_s += time.perf_counter() - t
        t = time.perf_counter()
        loss, _ = module.micro_loss(item)  # student fwd + teacher fwd again (the real step)
        loss.backward()
        student_s += time.perf_counter() - t
    times["train: teacher forward"] = teacher_s
    times["train: student fwd+bwd"] = student_s - teacher_s
    total = sum(times.values())
    n_turns = sum(e.length for e in episodes)
    print(f"{len(games)} games x {args.turns} turns ({n_turns} turns, {tokens} response tokens), mode={args.mode}, "
          f"student {args.student_layers} layers, teacher {args.model}, threads={torch.get_num_threads()}")
    print(f"{'phase':<28}{'seconds':>9}{'share %':>9}{'tokens/s':>10}")
    for k, v in times.items():
        print(f"{k:<28}{v:>9.2f}{100 * v / total:>9.1f}{tokens / v:>10.1f}")
    print(f"{'epoch total':<28}{total:>9.2f}{100.0:>9.1f}{tokens / total:>10.1f}")
    print(f"training step alone: {tokens / student_s:.1f} response tokens/s")


if __name__ == "__main__":
    main()
