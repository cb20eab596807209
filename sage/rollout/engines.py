"""The one place a rollout engine is chosen: ``data.rollout.engine`` -> a `Generator`.

``hf`` is the project's own engine (`HFGenerator`, the exact reference the tests compare against);
``vllm`` is a colocated `vllm.LLM` (`sage.rollout.vllm_engine`), started once per process and given the
policy's current weights whenever a generator is made, i.e. before every rollout. vLLM is imported only
when asked for, so the base install (no vLLM) keeps working and importing the project never loads it.
"""

from __future__ import annotations

from sage.rollout.vllm_check import EngineUnavailableError, require_vllm, vllm_installed

__all__ = ["EngineUnavailableError", "make_generator", "require_vllm", "vllm_installed"]


def make_generator(engine: str, model, tokenizer, seed: int = 0, max_model_len: int | None = None):
    """A `Generator` of ``engine`` for ``model`` (for vllm: the shared engine, synced to ``model`` now)."""
    if engine == "hf":
        from sage.rollout.generation import HFGenerator

        return HFGenerator(model, tokenizer, seed=seed)
    if engine == "vllm":
        require_vllm()
        from sage.rollout.vllm_engine import VLLMGenerator

        return VLLMGenerator(model, tokenizer, seed=seed, max_model_len=max_model_len)
    raise ValueError(f"unknown rollout engine {engine!r}: allowed hf, vllm")
