"""One epoch of training data, built in one direction: episodes -> annotation -> samples -> optimizer
steps -> micro-batch items, plus the epoch's summary statistics.

Every item carries its step's *global* normalization denominator and trained weight (summed over the
step's micro-batches and over ranks before any backward), so gradient accumulation and the number of
GPUs never change the loss (docs/METHOD.md, Normalization). The first item served carries the epoch's
statistics, which the LightningModule logs: nothing is written back into the module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sage.batching import build_steps, flatten_steps, transcript_samples, window_samples
from sage.distributed import align_steps
from sage.rollout.records import Episode


@dataclass
class Experience:
    epoch: int
    episodes: list[Episode]
    items: list[dict]  # one micro-batch per item, in optimizer-step order
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class ExperienceBuilder:
    annotate: Callable[[list[Episode], bool], dict[str, float]]  # judge + teacher pass (`Annotator`)
    normalize: str  # the loss normalization: which denominator the items carry
    transcript: bool  # one sample per episode (transcript) or per turn (window)
    samples_per_step: int
    max_tokens_per_micro_batch: int
    pad_id: int
    seed: int

    def build(self, episodes: list[Episode], epoch: int, extra_stats: dict[str, float] | None = None) -> Experience:
        timings = self.annotate(episodes, self.transcript)
        samples = transcript_samples(episodes) if self.transcript else window_samples(episodes)
        steps = build_steps(samples, self.samples_per_step, self.max_tokens_per_micro_batch, self.pad_id,
                            seed=self.seed + epoch)
        weighted = [s.denominator("weighted") for s in steps]  # sum(g * kappa): also each step's trained weight
        own = weighted if self.normalize == "weighted" else [s.denominator(self.normalize) for s in steps]
        dens, counts, weights = align_steps(own, [len(s.micro_batches) for s in steps], weighted)
        items = flatten_steps(steps, dens, counts, weights)
        for t in (t for ep in episodes for t in ep.turns):  # the items hold their own copies
            t.teacher_hidden = None
        stats = episode_stats(episodes) | (extra_stats or {}) | timings
        return Experience(epoch, episodes, items, stats)


def episode_stats(episodes: list[Episode]) -> dict[str, float]:
    """Per-epoch rollout summary: success, length, gate label rates, mean teacher confidence."""
    turns = [t for ep in episodes for t in ep.turns]
    n_ep, n_turn = max(1, len(episodes)), max(1, len(turns))
    labels = [str(t.gate_label or "").lower() for t in turns]
    conf = [c for t in turns if t.confidence for c in t.confidence]
    return {
        "episode_success": sum(ep.success for ep in episodes) / n_ep,
        "episode_length": sum(ep.length for ep in episodes) / n_ep,
        "invalid_format_rate": sum(not t.valid_format for t in turns) / n_turn,
        "gate/skip_rate": labels.count("skip") / n_turn,
        "gate/weak_rate": labels.count("weak") / n_turn,
        "gate/strong_rate": labels.count("strong") / n_turn,
        "gate/intervene_rate": labels.count("intervene") / n_turn,
        "gate_mean": sum(t.gate for t in turns) / n_turn,
        "confidence_mean": sum(conf) / len(conf) if conf else 1.0,
        "turns": float(len(turns)),
    }
