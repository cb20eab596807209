"""How well a teacher judges: its verdicts against the offline labels, on turns it did not train on.

    python -m sage.teacher.judge_eval --model smollm2-135m-alfworld --split valid_seen --games 30 \
        --policy noisy --out results/teacher/judge_noisy_seen.json

Turns come from non-expert policies on held-out games: ``noisy`` (the hand-coded expert with 45% noise
turns: detours, failed commands, repeats) or ``sampled`` (the judged model itself acting, sampled at
temperature 1; the expert only labels). Every turn gets its offline label (sage.teacher.labels) and two
verdicts: the teacher judge's (``model.gate.mode: teacher_judge``, P(label) from its next-token
probabilities) and the rule gate's (``feedback_rule``). Reported: the confusion matrices, accuracy and the
AUROC of P(SKIP) against "the offline label is SKIP" (the rule's P(SKIP) is 0 or 1). A teacher shipped with a
judge calibration (sage.teacher.calibrate) is judged as distillation uses it, calibrated; its uncalibrated
figures come from the same scores.
Prompts and rollout settings are read from the given configs (default configs/base.yaml), so the judge
sees exactly what it sees in distillation.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import yaml
from torchmetrics.functional.classification import binary_auroc, multiclass_confusion_matrix

from sage.distill.gate import FeedbackRule
from sage.distill.judge import TeacherJudge
from sage.distill.judge_prompt import JudgePrompt
from sage.envs import EnvPool, PromptBuilder, PromptTemplate, find_games, panel_games
from sage.loaders import balanced
from sage.models import load_model, load_tokenizer
from sage.rollout.engines import make_generator
from sage.rollout.loop import rollout
from sage.specs import INTERVENE, SKIP, STRONG, THREE_LEVEL, GateSpec, RolloutSpec
from sage.teacher.labels import offline_labels
from sage.teacher.policy import ExpertMixPolicy, Mix, PeekPool

POLICIES = {"noisy": Mix(random=0.25, invalid=0.1, repeat=0.1), "sampled": Mix(model=1.0)}
BASE = Path(__file__).resolve().parents[2] / "configs" / "base.yaml"


def merged_config(paths: list[str]) -> dict:
    """The given YAML files merged in order (nested dicts merge, other values replace)."""
    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, v in (b or {}).items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    cfg: dict = {}
    for p in paths:
        cfg = merge(cfg, yaml.safe_load(Path(p).read_text()) or {})
    return cfg


def play(model, tokenizer, games, policy: str, cfg: dict, seed: int, max_turns: int, workers: int):
    data = cfg.get("data", {})
    spec = RolloutSpec(**{**data.get("rollout", {}), "temperature": 1.0, "top_p": 1.0})
    prompt = PromptBuilder(PromptTemplate(**(data.get("prompt") or {})))
    with EnvPool(workers, max_steps=max_turns, expert=True) as pool:
        peek = PeekPool(pool)
        gen = (make_generator(spec.engine, model, tokenizer, seed=seed, max_model_len=spec.max_context_tokens)
               if POLICIES[policy].model > 0 else None)
        mix_policy = ExpertMixPolicy(peek, tokenizer, POLICIES[policy], prompt.template.expert_answer, seed, gen)
        return rollout(mix_policy, peek, games, prompt, tokenizer, spec, greedy=False)


def scores(labels: list[str], probs_skip: list[float], predicted: list[str], classes: list[str]) -> dict:
    truth = torch.tensor([classes.index(x) for x in labels])
    pred = torch.tensor([classes.index(x) for x in predicted])
    is_skip = (truth == classes.index(SKIP)).long()
    auroc = float(binary_auroc(torch.tensor(probs_skip), is_skip)) if 0 < int(is_skip.sum()) < len(labels) else None
    cm = multiclass_confusion_matrix(pred, truth, num_classes=len(classes)).tolist()
    return {"classes": classes, "confusion_rows_offline_cols_verdict": cm,
            "accuracy": float((pred == truth).float().mean()), "auroc_p_skip": auroc}


def pick_games(split: str, n_games: int, seed: int, data_root: str | None) -> list:
    """The first `n_games` of the split's panel (round-robin over task types), or a seeded sample of the
    split where it has no panel (e.g. train)."""
    try:
        return balanced(panel_games(split, data_root), n_games)
    except Exception:  # no panel for this split (e.g. train): a seeded sample
        return balanced(find_games(split, data_root, sample=max(n_games * 4, n_games), seed=seed), n_games)


def config_judge(cfg: dict, model, tok, calibrated: bool = True) -> TeacherJudge:
    """The teacher judge exactly as the config's distillation would build it (labels, history, prompt)."""
    model_cfg = cfg.get("model", {})
    gate = model_cfg.get("gate", {})
    spec = GateSpec(labels=tuple(gate.get("labels", THREE_LEVEL)),
                    judge_history=gate.get("judge_history", 2), calibrated=calibrated)
    return TeacherJudge(spec, model, tok, JudgePrompt(**(model_cfg.get("judge_prompt") or {})))


def evaluate(model_name: str, split: str, n_games: int, policy: str, configs: list[str], seed: int,
             max_turns: int, workers: int, data_root: str | None) -> dict:
    cfg = merged_config(configs)
    tok = load_tokenizer(model_name)
    model = load_model(model_name, trainable=False)
    teacher = config_judge(cfg, model, tok)
    labels = teacher.labels
    games = pick_games(split, n_games, seed, data_root)
    t0 = time.perf_counter()
    episodes = [e for e in play(model, tok, games, policy, cfg, seed, max_turns, workers) if e.error is None]
    played = time.perf_counter() - t0
    offline = [lab for e in episodes for lab in offline_labels(e, labels)]
    rule = FeedbackRule()
    judged = copy.deepcopy(episodes)
    t0 = time.perf_counter()
    teacher.judge(judged)
    judge_seconds = time.perf_counter() - t0
    t_turns = [t for e in judged for t in e.turns]
    ruled = copy.deepcopy(episodes)
    rule.judge(ruled)
    r_turns = [t for e in ruled for t in e.turns]
    rule_pred = [SKIP if t.gate_label == SKIP else (INTERVENE if INTERVENE in labels else STRONG)
                 for t in r_turns]
    raw = {}
    if teacher.bias is not None:  # the same scores without the shipped calibration's offsets
        p = torch.softmax(torch.tensor([[t.gate_probs[x] for x in labels] for t in t_turns]).double().log()
                          - teacher.bias, dim=-1)
        raw = {"calibration": dict(zip(labels, teacher.bias.tolist(), strict=True)),
               "teacher_judge_uncalibrated": scores(offline, p[:, labels.index(SKIP)].tolist(),
                                                    [labels[int(i)] for i in p.argmax(-1)], list(labels))}
    return {
        "model": model_name, "split": split, "games": len(episodes), "policy": policy, "turns": len(offline),
        "max_turns": max_turns, "seed": seed, "offline_label_counts": {x: offline.count(x) for x in labels},
        "teacher_judge": scores(offline, [t.gate_probs[SKIP] for t in t_turns], [t.gate_label for t in t_turns],
                                list(labels)),
        "feedback_rule": scores(offline, [t.gate_probs[SKIP] for t in r_turns], rule_pred, list(labels)),
        **raw,
        "seconds_play": round(played, 1), "seconds_judge": round(judge_seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-alfworld")
    ap.add_argument("--split", default="valid_seen")
    ap.add_argument("--games", type=int, default=30)
    ap.add_argument("--policy", choices=sorted(POLICIES), default="noisy")
    ap.add_argument("--config", action="append", default=None, help="YAML configs, merged over configs/base.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-turns", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=None, help="write the figures here (JSON)")
    args = ap.parse_args(argv)
    if args.games < 1 or args.max_turns < 1 or args.workers < 0:
        ap.error(f"--games {args.games} and --max-turns {args.max_turns} must be >= 1, --workers >= 0")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        result = evaluate(args.model, args.split, args.games, args.policy, [str(BASE), *(args.config or [])],
                          args.seed, args.max_turns, args.workers, args.data_root)
    text = json.dumps(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
