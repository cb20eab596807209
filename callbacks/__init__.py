"""Lightning callbacks: ablation toggles, ALFWorld seen/unseen evaluation, episode transcripts, export."""

from callbacks.ablation import AblationToggles
from callbacks.evaluation import AlfworldEvaluation
from callbacks.export import ExportStudent
from callbacks.transcripts import EpisodeTranscripts

__all__ = ["AblationToggles", "AlfworldEvaluation", "EpisodeTranscripts", "ExportStudent"]
