"""Write each epoch's training episodes as JSONL (one episode a line) into the run's log dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L


def episode_record(ep, epoch: int) -> dict:
    return {
        "epoch": epoch,
        "game_id": ep.game_id,
        "split": ep.split,
        "task_type": ep.task_type,
        "task": ep.task,
        "won": ep.won,
        "length": ep.length,
        "truncated": ep.truncated,
        "turns": [
            {
                "step": t.step,
                "action": t.action,
                "valid_format": t.valid_format,
                "response": t.response_text,
                "feedback": t.feedback,
                "gate_label": t.gate_label,
                "gate": t.gate,
                "gate_probs": t.gate_probs,
                "confidence_mean": sum(t.confidence) / len(t.confidence) if t.confidence else None,
            }
            for t in ep.turns
        ],
    }


def write_jsonl(path: Path, episodes, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for ep in episodes:
            f.write(json.dumps(episode_record(ep, epoch)) + "\n")
    os.replace(tmp, path)


class EpisodeTranscripts(L.Callback):
    """`<log_dir>/episodes/epoch_NNN[_rankR].jsonl` with per-turn action, feedback, gate and confidence."""

    def __init__(self, enabled: bool = True, dirname: str = "episodes") -> None:
        self.enabled = enabled
        self.dirname = dirname

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if not self.enabled or dm is None or dm.last_epoch != trainer.current_epoch:
            return
        root = Path(trainer.log_dir or trainer.default_root_dir) / self.dirname
        suffix = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        write_jsonl(root / f"epoch_{trainer.current_epoch:03d}{suffix}.jsonl", dm.last_episodes, trainer.current_epoch)
