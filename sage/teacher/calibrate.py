"""Fit a shipped teacher judge's label calibration on train games and put it beside its adapter.

    python -m sage.teacher.calibrate [--name smollm2-135m-alfworld] [--games 30]

Why: a small judge trained on balanced examples can rank turns well (AUROC of P(SKIP)) and still put
nearly every turn under one label, because the label prior it ends with depends on the last optimizer
steps' label mix. A per-label offset on the verdict log-probabilities (SKIP's fixed at 0) corrects that
prior. The offsets are chosen to maximize accuracy against the offline labels (sage.teacher.labels) on
turns of *train* games played by the same non-expert policies the evaluation uses (the noisy expert and
the teacher itself, sampled), so the validation panels stay held out; `sage.teacher.judge_eval` then
measures the calibrated judge there. At distillation time the gate stays verifier-free: the offsets are
constants read with the adapter. Shipping a new adapter removes a stale calibration.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sage.io import write_atomic
from sage.models import load_model, load_tokenizer
from sage.shipped import CALIBRATION, SHIPPED
from sage.teacher.judge_eval import BASE, config_judge, merged_config, pick_games, play
from sage.teacher.labels import offline_labels


def fit_offsets(logp: torch.Tensor, truth: torch.Tensor, span: float = 6.0, step: float = 0.05) -> torch.Tensor:
    """Offsets ``[K]`` (the first fixed at 0) maximizing the accuracy of ``argmax(logp + offsets)`` against
    ``truth`` over a grid of ``[-span, span]``; among equally accurate offsets, the smallest in norm."""
    k = logp.shape[1]
    n = round(span / step)
    grid = torch.arange(-n, n + 1, dtype=torch.float64) * step
    mesh = torch.cartesian_prod(*[grid] * (k - 1)).reshape(-1, k - 1)
    offsets = torch.cat([torch.zeros(len(mesh), 1, dtype=torch.float64), mesh], dim=1)  # [G, K]
    correct = torch.zeros(len(offsets), dtype=torch.long)
    for chunk in torch.arange(len(offsets)).split(4096):
        pred = (logp[None, :, :] + offsets[chunk, None, :]).argmax(-1)  # [g, N]
        correct[chunk] = (pred == truth[None, :]).sum(-1)
    best = correct == correct.max()
    norms = torch.where(best, offsets.norm(dim=1), torch.full_like(offsets[:, 0], float("inf")))
    return offsets[int(norms.argmin())]


def calibrate(name: str, n_games: int, seed: int, max_turns: int, workers: int, data_root: str | None) -> dict:
    cfg = merged_config([str(BASE)])
    tok = load_tokenizer(name)
    model = load_model(name, trainable=False)
    judge = config_judge(cfg, model, tok, calibrated=False)
    labels = judge.labels
    t0 = time.perf_counter()
    episodes = [e for i, policy in enumerate(("noisy", "sampled"))
                for e in play(model, tok, pick_games("train", n_games, seed + i, data_root), policy, cfg, seed + i,
                              max_turns, workers) if e.error is None]
    judge.judge(episodes)
    turns = [t for e in episodes for t in e.turns]
    logp = torch.tensor([[t.gate_probs[lab] for lab in labels] for t in turns], dtype=torch.float64).log()
    truth = torch.tensor([labels.index(x) for e in episodes for x in offline_labels(e, labels)])
    offsets = fit_offsets(logp, truth)
    accuracy = {key: float(((logp + b).argmax(-1) == truth).double().mean())
                for key, b in (("raw", torch.zeros(len(labels), dtype=torch.float64)), ("calibrated", offsets))}
    source = json.loads((SHIPPED[name][1] / "SOURCE.json").read_text())
    return {
        "adapter_sha256": source["adapter_sha256"],  # the adapter these offsets belong to
        "bias": {",".join(labels): {lab: round(float(x), 4) for lab, x in zip(labels, offsets, strict=True)}},
        "fitted_on": {"split": "train", "games_per_policy": n_games, "policies": ["noisy", "sampled"],
                      "turns": len(turns), "max_turns": max_turns, "seed": seed,
                      "offline_label_counts": {lab: int((truth == i).sum()) for i, lab in enumerate(labels)}},
        "train_accuracy": accuracy, "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="smollm2-135m-alfworld", choices=sorted(SHIPPED))
    ap.add_argument("--games", type=int, default=30, help="train games per policy (noisy expert, sampled teacher)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-turns", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args(argv)
    if args.games < 1 or args.max_turns < 1 or args.workers < 0:
        ap.error(f"--games {args.games} and --max-turns {args.max_turns} must be >= 1, --workers >= 0")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):  # scored as judge_eval scores
        result = calibrate(args.name, args.games, args.seed, args.max_turns, args.workers, args.data_root)
    out = SHIPPED[args.name][1] / CALIBRATION
    write_atomic(out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
