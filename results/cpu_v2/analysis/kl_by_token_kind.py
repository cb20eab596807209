"""Where is the student's reverse KL to the teacher: in the answer format or in the command?

Each answer is `<action>COMMAND</action>` plus the end token. The study reports one per-token mean of
KL(student || teacher) over all response tokens; this script splits it, on an OPD run's training episodes
(the student's own sampled transcripts of one epoch), into the format tokens (the first 3 and the last 4 of
a well-formed answer) and the command tokens between them, scoring with the run's final student
(`checkpoints/last.ckpt`) and the teacher in float32.

    python results/cpu_v2/analysis/kl_by_token_kind.py RUN_DIR --student runs/cpu_v2/student/model --epoch 4 --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sage.models import load_model
from sage.specs import ModelSpec

HEAD, TAIL = 3, 4  # '<' 'action' '>' ... '</' 'action' '>' '<|im_end|>' (SmolLM2's tokenizer)


def per_token_kl(student, teacher, ids: list[int], positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(student || teacher) of the next-token distributions predicting the tokens at ``positions``, and the
    teacher's top probability there (SAGE-OPD's `max_prob` confidence before its floor)."""
    x = torch.tensor([ids])
    at = torch.tensor(positions) - 1
    with torch.no_grad():
        hs = student.model(x).last_hidden_state[0, at]
        ht = teacher.model(x).last_hidden_state[0, at]
        ls = torch.log_softmax(student.lm_head(hs).float(), -1)
        lt = torch.log_softmax(teacher.lm_head(ht).float(), -1)
    return (ls.exp() * (ls - lt)).sum(-1), lt.exp().max(-1).values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--student", required=True, help="the run's student start (the checkpoint holds its weights)")
    ap.add_argument("--teacher", default="smollm2-135m-alfworld")
    ap.add_argument("--epoch", type=int, default=4)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    run = Path(args.run_dir)
    student = load_model(ModelSpec(args.student), trainable=False).eval()
    state = torch.load(run / "checkpoints/last.ckpt", weights_only=False, map_location="cpu")["state_dict"]
    missing, unexpected = student.load_state_dict({k.removeprefix("student."): v for k, v in state.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # lm_head: tied to the embeddings
    teacher = load_model(ModelSpec(args.teacher), trainable=False).eval()
    episodes = torch.load(run / "epoch_data" / f"epoch_{args.epoch:03d}.pt", weights_only=False)
    sums = {"format": [0.0, 0, 0.0], "command": [0.0, 0, 0.0], "malformed answers": [0.0, 0, 0.0]}
    t0 = time.perf_counter()
    for ep in episodes:
        positions, kinds = [], []
        for t in ep.turns:
            n = len(t.response_ids)
            text = t.response_text.strip()
            good = text.startswith("<action>") and text.endswith("</action>") and n > HEAD + TAIL
            for k in range(n):
                positions.append(t.offset + k)
                kinds.append("malformed answers" if not good else "format" if k < HEAD or k >= n - TAIL else "command")
        kl, conf = per_token_kl(student, teacher, ep.sequence_ids, positions)
        for kind, v, c in zip(kinds, kl.tolist(), conf.tolist(), strict=True):
            sums[kind][0] += v
            sums[kind][1] += 1
            sums[kind][2] += c
    total = sum(s[0] for s in sums.values()), sum(s[1] for s in sums.values())
    out = {"run_dir": args.run_dir, "epoch": args.epoch, "seconds": round(time.perf_counter() - t0, 1),
           "all": {"tokens": total[1], "kl_per_token": total[0] / total[1], "kl_share": 1.0}}
    for kind, (s, n, c) in sums.items():
        out[kind] = {"tokens": n, "kl_per_token": s / n if n else None, "kl_share": s / total[0],
                     "teacher_max_prob": c / n if n else None}
    print(json.dumps(out, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
