"""Lightning callbacks: ablation report, ALFWorld seen/unseen evaluation, episode transcripts, export."""

from callbacks.ablation import AblationReport
from callbacks.evaluation import AlfworldEvaluation
from callbacks.export import ExportStudent
from callbacks.transcripts import EpisodeTranscripts

__all__ = ["AblationReport", "AlfworldEvaluation", "EpisodeTranscripts", "ExportStudent"]
