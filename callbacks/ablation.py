"""Switch SAGE-OPD's three parts off from config (`ablation:` in YAML), before any rollout.

Each switch rewrites the module's typed spec, so the data path and the loss see one consistent
configuration: gate off -> g_t = 1 (`always`), confidence off -> kappa = 1 (`none`),
normalization off -> standard OPD token mean (`opd`).
"""

from __future__ import annotations

from dataclasses import replace

import lightning as L


class AblationToggles(L.Callback):
    def __init__(self, gate: bool = True, confidence: bool = True, normalize: bool = True) -> None:
        self.gate = gate
        self.confidence = confidence
        self.normalize = normalize

    def apply(self, module) -> None:
        if not self.gate:
            module.gate_spec = replace(module.gate_spec, mode="always")
        if not self.confidence:
            module.confidence_spec = replace(module.confidence_spec, kind="none")
        if not self.normalize:
            module.loss_spec = replace(module.loss_spec, normalize="opd")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.apply(pl_module)
        hp = {
            "ablation/gate": self.gate,
            "ablation/confidence": self.confidence,
            "ablation/normalize": self.normalize,
            "effective/gate_mode": pl_module.gate_spec.mode,
            "effective/confidence_kind": pl_module.confidence_spec.kind,
            "effective/normalize": pl_module.loss_spec.normalize,
        }
        for logger in trainer.loggers:
            logger.log_hyperparams(hp)
