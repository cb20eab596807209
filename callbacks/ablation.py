"""Which of SAGE-OPD's three parts a run has on, read from the module's specs and logged.

The ablation overlays in configs/ablations/ set the specs themselves (`model.gate.mode: always`,
`model.confidence.kind: none`, `model.loss.normalize: opd`), so a run's config.yaml says what ran;
this callback only reports it: hyperparameters `sage/gate`, `sage/confidence`, `sage/normalize` (on/off)
beside the effective settings, and one line on rank 0.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


def sage_parts(module) -> dict[str, bool]:
    """On/off of the turn gate, the teacher-confidence weight and the scale-preserving normalization."""
    return {
        "gate": module.gate_spec.mode != "always",
        "confidence": module.confidence_spec.kind != "none",
        "normalize": module.loss_spec.normalize == "weighted",
    }


class AblationReport(L.Callback):
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled or getattr(pl_module, "objective", "distill") != "distill":
            return
        parts = sage_parts(pl_module)
        hp = {f"sage/{k}": on for k, on in parts.items()} | {
            "effective/gate_mode": pl_module.gate_spec.mode,
            "effective/confidence_kind": pl_module.confidence_spec.kind,
            "effective/normalize": pl_module.loss_spec.normalize,
        }
        for logger in trainer.loggers:
            logger.log_hyperparams(hp)
        rank_zero_info("SAGE-OPD parts: " + ", ".join(f"{k} {'on' if on else 'off'}" for k, on in parts.items()))
