"""The ALFWorld text environment: game discovery, one-game env, process pool, prompts and action parsing."""

from sage.envs.alfworld_env import AlfworldEnv, StepResult, task_text
from sage.envs.games import (
    SPLIT_ALIASES,
    SPLITS,
    TASK_TYPES,
    DataRootError,
    GameInfo,
    GameLoadError,
    UnknownSplitError,
    bundled_root,
    canonical_split,
    find_games,
    panel_games,
    resolve_data_root,
    split_key,
    walkthrough,
)
from sage.envs.pool import EnvPool
from sage.envs.prompt import ParsedAction, PromptBuilder, PromptTemplate, normalize_command, parse_action

__all__ = [
    "SPLIT_ALIASES",
    "SPLITS",
    "TASK_TYPES",
    "AlfworldEnv",
    "DataRootError",
    "EnvPool",
    "GameInfo",
    "GameLoadError",
    "ParsedAction",
    "PromptBuilder",
    "PromptTemplate",
    "StepResult",
    "UnknownSplitError",
    "bundled_root",
    "canonical_split",
    "find_games",
    "normalize_command",
    "panel_games",
    "parse_action",
    "resolve_data_root",
    "split_key",
    "task_text",
    "walkthrough",
]
