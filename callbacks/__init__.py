"""Lightning callbacks: ablation report, ALFWorld seen/unseen evaluation, episode log, export."""

from callbacks.ablation import AblationReport
from callbacks.episode_log import EpisodeLog
from callbacks.evaluation import AlfworldEvaluation
from callbacks.export import ExportStudent

__all__ = ["AblationReport", "AlfworldEvaluation", "EpisodeLog", "ExportStudent"]
