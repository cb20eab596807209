"""One training epoch, built in one direction: episodes -> annotation -> samples -> optimizer steps, plus
its summary statistics; and the one route by which it reaches the module and the callbacks.

`EpochPlanner.plan` reads top to bottom. Its result, an `Epoch`, is handed to the LightningModule and
to every callback that defines ``on_epoch_data`` (`publish`), once, before the epoch's first step: the
module logs the statistics, `callbacks.EpisodeLog` writes the episodes. Nothing rides inside a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sage.distill.annotate import Annotation
from sage.plan import MicroBatch, OptimizerStep, plan_steps
from sage.rollout.context import Context, context_for
from sage.rollout.records import Episode, admissible_flags, repeat_flags
from sage.samples import episode_samples
from sage.specs import GATE_LABELS, INTERVENE, THREE_LEVEL, TWO_LEVEL
from sage.teacher.labels import offline_labels


@dataclass
class Epoch:
    index: int
    episodes: list[Episode]  # annotated: gate, confidence and teacher log-probs per turn
    steps: list[OptimizerStep]
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def micro_batches(self) -> list[MicroBatch]:
        """What the epoch's dataloader serves, in step order."""
        return [mb for step in self.steps for mb in step.micro_batches]


@dataclass
class EpochPlanner:
    annotate: Callable[[list[Episode], Context], Annotation]  # gate + teacher pass (`sage.distill.annotate.Annotator`)
    normalize: str  # the loss normalization: which denominator the steps carry
    context: Context | str | bool  # how the episodes were played (`sage.rollout.context`; a bool: transcript)
    samples_per_step: int
    max_tokens_per_micro_batch: int
    pad_id: int
    seed: int

    def __post_init__(self) -> None:
        self.context = context_for(self.context)

    def plan(self, episodes: list[Episode], index: int, rollout_seconds: float) -> Epoch:
        annotation = self.annotate(episodes, self.context)
        samples = episode_samples(episodes, self.context, annotation.teacher_hidden)
        steps = plan_steps(samples, self.samples_per_step, self.max_tokens_per_micro_batch, self.pad_id,
                           self.normalize, seed=self.seed + index)
        stats = episode_stats(episodes) | {"rollout_seconds": rollout_seconds} | annotation.seconds
        return Epoch(index, episodes, steps, stats)


def judge_agreement(episodes: list[Episode]) -> dict[str, float]:
    """How often the judge's label equals the turn's offline label (`sage.teacher.labels`), over the turns
    that have both: the environment tracked the expert (``data.track_expert``) and a judge labelled the
    turn with SKIP/WEAK/STRONG or SKIP/INTERVENE. Empty when there are none."""
    pairs = []
    for ep in episodes:
        judged = [t.gate_label for t in ep.turns]
        if not ep.turns or not all(g in GATE_LABELS for g in judged):
            continue
        labels = TWO_LEVEL if INTERVENE in judged else THREE_LEVEL
        pairs += [(g, lab) for t, g, lab in zip(ep.turns, judged, offline_labels(ep, labels), strict=True)
                  if t.expert_action is not None]
    if not pairs:
        return {}
    return {"judge_agreement": sum(a == b for a, b in pairs) / len(pairs), "judge_agreement_turns": float(len(pairs))}


def episode_stats(episodes: list[Episode]) -> dict[str, float]:
    """Per-epoch rollout summary: success, length, admissible and repeated actions, gate label rates, mean
    teacher confidence, and the judge's agreement with the offline labels when the expert was tracked."""
    turns = [t for ep in episodes for t in ep.turns]
    n_ep, n_turn = max(1, len(episodes)), max(1, len(turns))
    labels = [str(t.gate_label or "").lower() for t in turns]
    conf = [c for t in turns if t.confidence for c in t.confidence]
    admissible = sum(sum(admissible_flags(ep)) for ep in episodes)
    repeats = sum(sum(repeat_flags(ep)) for ep in episodes)
    return judge_agreement(episodes) | {
        "episode_success": sum(ep.success for ep in episodes) / n_ep,
        "episode_length": sum(ep.length for ep in episodes) / n_ep,
        "invalid_format_rate": sum(not t.valid_format for t in turns) / n_turn,
        "admissible_rate": admissible / n_turn,  # as the evaluation counts them (callbacks.evaluation)
        "repeat_rate": repeats / n_turn,
        "gate/skip_rate": labels.count("skip") / n_turn,
        "gate/weak_rate": labels.count("weak") / n_turn,
        "gate/strong_rate": labels.count("strong") / n_turn,
        "gate/intervene_rate": labels.count("intervene") / n_turn,
        "gate_mean": sum(t.gate for t in turns) / n_turn,
        "confidence_mean": sum(conf) / len(conf) if conf else 1.0,
        "turns": float(len(turns)),
    }


def publish(trainer, epoch: Epoch) -> None:
    """The named route of an epoch to its readers: the LightningModule's ``on_epoch_data(epoch)`` and each
    callback's ``on_epoch_data(trainer, pl_module, epoch)`` (those that define it)."""
    module = trainer.lightning_module
    module.on_epoch_data(epoch)
    for callback in trainer.callbacks:
        hook = getattr(callback, "on_epoch_data", None)
        if hook is not None:
            hook(trainer, module, epoch)
