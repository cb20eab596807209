"""Lightning callbacks: ablation toggles, ALFWorld seen/unseen evaluation, episode transcripts."""

from callbacks.ablation import AblationToggles
from callbacks.evaluation import AlfworldEvaluation
from callbacks.transcripts import EpisodeTranscripts

__all__ = ["AblationToggles", "AlfworldEvaluation", "EpisodeTranscripts"]
