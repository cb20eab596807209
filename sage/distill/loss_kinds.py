"""The one table of token losses: for each kind, what it needs besides the student's hidden states.

The module (which teacher outputs a micro-batch passes), the teacher scorer (whether annotation keeps
hidden states) and the fused loss (what it checks and computes) all read `LOSS_KINDS`; a new loss is one
row here, its name in `sage.specs.Divergence` and its math in `sage.distill.divergence.token_divergence`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sage.specs import DIVERGENCES


@dataclass(frozen=True)
class LossKind:
    name: str
    teacher_hidden: bool  # the teacher's final hidden states: its whole distribution at each token
    teacher_logprobs: bool  # log pi_T(y) of the sampled token only (from annotation, or from the hidden states)
    targets: bool  # the sampled token ids y

    @property
    def teacher(self) -> bool:
        """Reads the teacher at all (SFT does not)."""
        return self.teacher_hidden or self.teacher_logprobs


LOSS_KINDS: dict[str, LossKind] = {k.name: k for k in (
    LossKind("reverse_kl", teacher_hidden=True, teacher_logprobs=False, targets=False),
    LossKind("forward_kl", teacher_hidden=True, teacher_logprobs=False, targets=False),
    LossKind("jsd", teacher_hidden=True, teacher_logprobs=False, targets=False),
    # policy-gradient form on the sampled token: one teacher log-prob per token, no distribution
    LossKind("sampled_reverse_kl", teacher_hidden=False, teacher_logprobs=True, targets=True),
    # token cross-entropy on served trajectories (model.objective sft): no teacher
    LossKind("sft", teacher_hidden=False, teacher_logprobs=False, targets=True),
)}
assert set(DIVERGENCES) <= set(LOSS_KINDS), "every configurable divergence needs its row"


def loss_kind(objective: str, divergence: str) -> LossKind:
    """The loss a run trains with: ``sft`` for the SFT objective, else the configured divergence."""
    return LOSS_KINDS["sft" if objective == "sft" else divergence]
