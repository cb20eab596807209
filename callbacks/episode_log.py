"""The episode log: each epoch's training episodes as JSONL (one episode a line) in the run's log dir."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from sage.epoch import Epoch
from sage.io import atomic_path


def _round(xs, nd: int = 4) -> list[float] | None:
    """Four decimals keep a paper-scale epoch's per-token arrays a few MB; empty or missing -> None."""
    return [round(float(x), nd) for x in xs] if xs else None


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """Each response token decoded on its own (specials kept), so the viewer can shade it. A character
    split over several byte-level tokens goes whole onto the last of them (the others get "")."""
    kw = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    pieces = tokenizer.batch_decode([[i] for i in ids], **kw)
    if not any("\ufffd" in p for p in pieces):
        return pieces
    out, start = [], 0
    for i in range(len(ids)):
        text = tokenizer.decode(ids[start : i + 1], **kw)
        if text.endswith("\ufffd") and i + 1 - start < 4 and i + 1 < len(ids):
            continue  # an unfinished UTF-8 sequence: take the next token too
        out += [""] * (i - start) + [text]
        start = i + 1
    return out


def episode_record(ep, epoch: int, tokenizer=None) -> dict:
    """One JSON-able line per episode. Besides the per-turn summary it keeps what `sage view` shows:
    the observation and admissible commands the student saw, and per response token its text (only
    with a `tokenizer`), teacher confidence kappa, student sampling log-prob and teacher log-prob
    (null where the teacher did not score the turn)."""
    turns = []
    for t in ep.turns:
        rec = {
            "index": t.index,
            "observation": t.observation,
            "admissible": list(t.admissible),
            "action": t.action,
            "valid_format": t.valid_format,
            "response": t.response_text,
            "feedback": t.feedback,
            "gate_label": t.gate_label,
            "gate": round(float(t.gate), 4),
            "gate_probs": {k: round(float(v), 4) for k, v in t.gate_probs.items()} if t.gate_probs else None,
            "confidence_mean": round(sum(t.confidence) / len(t.confidence), 4) if t.confidence else None,
        }
        if tokenizer is not None:
            rec["tokens"] = token_pieces(tokenizer, t.response_ids)
        rec["confidence"] = _round(t.confidence)
        rec["logprob"] = _round(t.logprobs)
        rec["teacher_logprob"] = _round(t.teacher_logprobs)
        turns.append(rec)
    return {
        "epoch": epoch,
        "game_id": ep.game_id,
        "split": ep.split,
        "task_type": ep.task_type,
        "task": ep.task,
        "won": ep.won,
        "length": ep.length,
        "truncated": ep.truncated,
        "turns": turns,
    }


def write_jsonl(path: Path, episodes, epoch: int, tokenizer=None) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for ep in episodes:
            f.write(json.dumps(episode_record(ep, epoch, tokenizer)) + "\n")


class EpisodeLog(L.Callback):
    """`<log_dir>/episodes/epoch_NNN[_rankR].jsonl`: each epoch's training episodes with per-turn action,
    feedback, gate and confidence, and per-token confidence and log-probs for `sage view`. Written when the
    epoch is published (`sage.epoch.publish`), before its first step."""

    def __init__(self, enabled: bool = True, dirname: str = "episodes") -> None:
        self.enabled = enabled
        self.dirname = dirname

    def on_epoch_data(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: Epoch) -> None:
        if not self.enabled:
            return
        root = Path(trainer.log_dir or trainer.default_root_dir) / self.dirname
        suffix = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        write_jsonl(root / f"epoch_{epoch.index:03d}{suffix}.jsonl", epoch.episodes, epoch.index,
                    tokenizer=getattr(pl_module, "tokenizer", None))
