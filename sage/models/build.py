"""Build the student and the frozen teacher straight on their device in their dtype: tokenizer, tiny random
models, layer truncation, freezing, gradient checkpointing, LoRA."""

from __future__ import annotations

import torch
from torch import nn

from sage.models.names import TINY_TOKENIZER, ModelNotFoundError, is_tiny, resolve_name
from sage.models.smollm2 import MODEL_MAX_LENGTH, SMOLLM2_BOS, SMOLLM2_EOS, SMOLLM2_VOCAB
from sage.shipped import apply_shipped_adapter
from sage.specs import ModelSpec, check_choice

DTYPES = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64,
}



def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu", trained: bool = True) -> torch.dtype:
    """A dtype name (or ``"auto"``, see `ModelSpec`) as a torch dtype for weights on ``device``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" and not trained else torch.float32
    check_choice("dtype", dtype, tuple(DTYPES))
    return DTYPES[dtype]


def load_tokenizer(name_or_path: str):
    """Tokenizer with left padding (batched generation) and a pad token (eos when it has none)."""
    from transformers import AutoTokenizer

    source, local = resolve_name(TINY_TOKENIZER if is_tiny(name_or_path) else name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except OSError as e:
        raise ModelNotFoundError(f"could not load tokenizer {name_or_path!r} (from {source}): {e}") from e
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_config(num_layers: int = 2, vocab_size: int = SMOLLM2_VOCAB):
    """A tiny Llama shaped like SmolLM2 (same special ids), small enough for CPU tests."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=SMOLLM2_BOS,
        eos_token_id=SMOLLM2_EOS,
        pad_token_id=SMOLLM2_EOS,
        tie_word_embeddings=True,
    )


def tiny_random_model(num_layers: int = 2, seed: int = 0, vocab_size: int = SMOLLM2_VOCAB, dtype=torch.float32):
    """Randomly initialized tiny Llama; the same seed always gives the same weights (RNG state is restored)."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config(num_layers, vocab_size))
    model.generation_config.eos_token_id = SMOLLM2_EOS
    model.generation_config.pad_token_id = SMOLLM2_EOS
    return model.to(resolve_dtype(dtype)).eval()


def decoder_layers(model) -> nn.ModuleList:
    """The decoder's layer list (Llama/Qwen/Mistral layout: ``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot find decoder layers of {type(model).__name__} (expected model.model.layers)")
    return layers


def truncate_layers(model, num_layers: int):
    """Keep the first ``num_layers`` decoder layers: a smaller student that keeps the teacher's vocabulary."""
    layers = decoder_layers(model)
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"num_layers={num_layers} but the model has {len(layers)} layers")
    if num_layers == len(layers):
        return model
    model.model.layers = nn.ModuleList(list(layers)[:num_layers])
    config = model.config
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[:num_layers]
    return model


def freeze(model):
    """Frozen teacher: no gradients anywhere and eval mode (no dropout)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_model(spec: ModelSpec | str, device: str | torch.device = "cpu", trainable: bool = True, **overrides):
    """Build the model described by ``spec`` (a `ModelSpec`, or a name plus ModelSpec fields as keywords)
    straight on ``device`` in its target dtype: no float32 host copy of a large teacher per rank.

    ``trainable=False`` gives a frozen model (the teacher); LoRA is only valid on a trainable model.
    """
    if isinstance(spec, str):
        spec = ModelSpec(name_or_path=spec, **overrides)
    elif overrides:
        raise TypeError("pass either a ModelSpec or a name with keyword overrides, not both")
    if spec.lora is not None and not trainable:
        raise ValueError("a LoRA spec was given for a frozen (trainable=False) model")
    device = torch.device(device)
    dtype = resolve_dtype(spec.dtype, device, trained=trainable and spec.lora is None)
    if trainable and spec.lora is None and dtype != torch.float32 and dtype != torch.float64:
        raise ValueError(
            f"full fine-tuning of {spec.name_or_path!r} in {spec.dtype} would update weights without float32 "
            "master copies; use dtype float32 (with trainer.precision bf16-mixed for bf16 compute) or a LoRA spec"
        )
    if is_tiny(spec.name_or_path):  # built on the CPU (the same draws on every machine), then moved
        model = tiny_random_model(spec.num_layers or 2, spec.seed, dtype=dtype)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        source, local = resolve_name(spec.name_or_path)
        kwargs = {"attn_implementation": spec.attn_implementation} if spec.attn_implementation else {}
        try:
            if spec.init == "random":
                config = AutoConfig.from_pretrained(source, local_files_only=local, **kwargs)
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
                    torch.manual_seed(spec.seed)
                    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    source, dtype=dtype, local_files_only=local, device_map={"": device}, **kwargs
                )
        except OSError as e:
            raise ModelNotFoundError(f"could not load model {spec.name_or_path!r} (from {source}): {e}") from e
        if spec.init != "random":
            model = apply_shipped_adapter(model, spec.name_or_path)
        if spec.num_layers is not None:
            truncate_layers(model, spec.num_layers)
    model = model.to(device)  # a no-op when it was built there
    if not trainable:
        return freeze(model)
    if spec.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    if spec.lora is not None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=spec.lora.r,
            lora_alpha=spec.lora.alpha,
            lora_dropout=spec.lora.dropout,
            target_modules=spec.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)  # adapters in float32: they are the trained master weights
    return model.train()


def keep_adapter_inputs(model) -> None:
    """Under bf16 autocast, stop peft from casting every LoRA layer's input to the adapters' float32
    (autocast runs the adapter matmuls in bf16 anyway; the cast only adds activation traffic).
    Only for models that always run under autocast: without it a bf16 input meets float32 adapters."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False


def vocab_rows(model) -> int:
    """Number of logit rows of the model's LM head (may exceed the tokenizer: padded vocabularies)."""
    return model.get_output_embeddings().weight.shape[0]

