"""What would the teacher do in the student's own states? (results/cpu_v2/README.md, "Reading")

OPD pulls the student's tokens toward the teacher's distribution *at the states the student reaches*. The
student loops (it repeats its previous action in ~85 % of turns); if the teacher, dropped into those looping
transcripts, would repeat too, OPD's signal cannot teach the student to leave its loops. This script takes
the training rollouts of an OPD run (its kept epoch files: the student's sampled transcripts), picks fixed
turns of each episode, and lets the teacher answer greedily at exactly the student's context; it counts how
often the teacher's action repeats the student's previous action, is admissible, and equals the student's.

    python results/cpu_v2/analysis/teacher_at_student_states.py RUN_DIR --epochs 0 4 --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sage.envs.prompt import parse_action
from sage.models import load_model, load_tokenizer
from sage.specs import ModelSpec

TURNS = (1, 5, 10, 20, 30, 40, 49)  # the turns probed in each episode (those it has)


def probe(teacher, tok, episodes, max_new_tokens: int = 48) -> list[dict]:
    rows = []
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for ep in episodes:
        for k in (k for k in TURNS if k < len(ep.turns)):
            t, prev = ep.turns[k], ep.turns[k - 1]
            context = torch.tensor([ep.sequence_ids[: t.offset]])
            with torch.no_grad():
                out = teacher.generate(context, attention_mask=torch.ones_like(context), max_new_tokens=max_new_tokens,
                                       do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
            text = tok.decode(out[0, context.shape[1]:], skip_special_tokens=True)
            action = parse_action(text).action
            rows.append({"game_id": ep.game_id, "turn": k, "context_tokens": int(context.shape[1]),
                         "student_action": t.action, "previous_action": prev.action, "teacher_action": action,
                         "student_repeats": t.action == prev.action, "teacher_repeats": action == prev.action,
                         "student_admissible": t.action in t.admissible, "teacher_admissible": action in t.admissible,
                         "teacher_equals_student": action == t.action})
    return rows


def summary(rows: list[dict]) -> dict:
    n = len(rows)
    keys = ("student_repeats", "teacher_repeats", "student_admissible", "teacher_admissible", "teacher_equals_student")
    out = {"turns": n, **{k: sum(r[k] for r in rows) / n for k in keys}}
    looping = [r for r in rows if r["student_repeats"]]
    out["in_loops"] = {"turns": len(looping), "teacher_repeats": sum(r["teacher_repeats"] for r in looping) / max(1, len(looping)),
                       "teacher_admissible": sum(r["teacher_admissible"] for r in looping) / max(1, len(looping))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--epochs", type=int, nargs="+", default=[0, 4])
    ap.add_argument("--teacher", default="smollm2-135m-alfworld")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = load_tokenizer(args.teacher)
    teacher = load_model(ModelSpec(args.teacher), trainable=False).eval()
    result = {"run_dir": args.run_dir, "teacher": args.teacher, "turns_probed": list(TURNS), "epochs": {}}
    for epoch in args.epochs:
        t0 = time.perf_counter()
        episodes = torch.load(Path(args.run_dir) / "epoch_data" / f"epoch_{epoch:03d}.pt", weights_only=False)
        rows = probe(teacher, tok, episodes)
        result["epochs"][str(epoch)] = {"summary": summary(rows), "seconds": round(time.perf_counter() - t0, 1),
                                        "rows": rows}
        print(epoch, json.dumps(result["epochs"][str(epoch)]["summary"]), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
