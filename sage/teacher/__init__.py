"""Making a CPU-sized teacher that acts and judges: expert-labelled rollouts (DAgger-style rounds) and
offline judge labels, served to the normal SFT training path (`data.source: dagger`)."""

from sage.teacher.labels import LABEL_RULE, offline_labels
from sage.teacher.policy import ExpertMixPolicy, PeekPool
from sage.teacher.rounds import collect_round

__all__ = ["LABEL_RULE", "ExpertMixPolicy", "PeekPool", "collect_round", "offline_labels"]
