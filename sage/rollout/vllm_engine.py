"""The vLLM rollout engine: a `vllm.LLM` colocated in the training process behind the `Generator` interface.

Why colocated and in-process: the student's weights change after every optimizer step, and the next
rollout must play with them. The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so
new weights reach it by reference through vLLM's own in-place reload path (``reload_weights``), no copy
through a socket or a checkpoint on disk. One engine per model shape is started once per process (engine
start costs seconds on a CPU) from a temporary folder holding only the student's config and tokenizer
(``load_format=dummy``: a layer-cut student's config is what vLLM builds); each `VLLMGenerator` made for
a rollout pushes the policy's current weights first (LoRA adapters merged into their base weights), then
drops the prefix cache, whose blocks were computed with the old weights.

Same contract as `HFGenerator`: token ids including the stop string's token / eos, the log-prob of each
token under the distribution it was drawn from (``logprobs_mode=processed_logprobs``: after temperature
and top-p; greedy: the model's own distribution), the text decoded by the project's tokenizer, and
whether a stop ended it. Sampling is seeded per request from (seed, call, session), so a rollout is a
function of its seed; vLLM's random stream differs from the hf engine's, so sampled episodes differ.
Prefix caching is always on: transcript mode's growing chats and window mode's shared system prompt hit it.
Memory: on a CPU the KV cache gets ``SAGE_VLLM_KV_CACHE_MB`` MiB (default 1024; vLLM would otherwise
reserve 92 % of RAM), on a GPU ``SAGE_VLLM_GPU_MEMORY`` of its memory (default 0.3, the rest is training's).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Hashable, Iterator, Sequence

import torch

from sage.forward import base_model
from sage.rollout.generation import Generation, GenerationStats, SamplingParams
from sage.rollout.vllm_check import EngineUnavailableError

DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_ENGINES: dict[tuple, _Engine] = {}


def _env_defaults() -> None:
    """Set before vLLM is first imported: in-process engine core, quiet logs."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")


def _unwrap(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hf_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under their Hugging Face checkpoint names; each LoRA layer's adapter delta is
    merged into its base weight on the fly (the model itself is left unmerged)."""
    inner = _unwrap(model)
    deltas = {}
    with torch.no_grad():
        for name, module in inner.named_modules():
            if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer") and not getattr(module, "merged", False):
                adapters = [a for a in module.active_adapters if a in getattr(module, "lora_A", {})]
                if adapters:
                    deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in adapters)
        for name, tensor in inner.state_dict().items():
            if "lora_" in name:
                continue
            name = name.replace(".base_layer.", ".")
            if name in deltas:
                tensor = tensor + deltas[name].to(tensor.dtype)
            yield name, tensor


class _Engine:
    """One started `vllm.LLM` and the folder it was built from."""

    def __init__(self, model, tokenizer, dtype: str, max_model_len: int, on_cpu: bool):
        _env_defaults()
        try:
            import vllm
        except ImportError as exc:  # installed but broken (e.g. a CUDA torchvision beside a CPU torch)
            raise EngineUnavailableError(f"data.rollout.engine=vllm: importing vLLM failed ({exc}); "
                                         "reinstall with scripts/setup.sh") from None
        inner = base_model(_unwrap(model))
        self.folder = tempfile.mkdtemp(prefix="sage-vllm-")
        config = inner.config.__class__.from_dict(inner.config.to_dict())
        config.architectures = [type(_unwrap(model)).__name__]
        config.save_pretrained(self.folder)
        tokenizer.save_pretrained(self.folder)
        kwargs = dict(model=self.folder, tokenizer=self.folder, dtype=dtype, load_format="dummy", seed=0,
                      max_model_len=max_model_len, enable_prefix_caching=True, logprobs_mode="processed_logprobs",
                      generation_config="vllm")
        if on_cpu:  # a fixed KV budget (vLLM's default reserves most of the RAM); eager: no compile at start.
            # No chunked prefill: a seeded request whose prompt is split over steps makes vLLM 0.32 rewind its
            # torch.Generator, which a CPU generator cannot ("CPU Generator does not use offset").
            kwargs.update(kv_cache_memory_bytes=int(os.environ.get("SAGE_VLLM_KV_CACHE_MB", "1024")) * 2**20,
                          enforce_eager=True, enable_chunked_prefill=False,
                          max_num_batched_tokens=max(max_model_len, 8192))
        else:
            kwargs.update(gpu_memory_utilization=float(os.environ.get("SAGE_VLLM_GPU_MEMORY", "0.3")))
        # vLLM's CPU worker replaces torch.set_num_threads process-wide and may lower the thread count for
        # serving; in a training process both belong to the trainer, so they are put back.
        set_threads, threads = torch.set_num_threads, torch.get_num_threads()
        try:
            self.llm = vllm.LLM(**kwargs)
            probe = vllm.SamplingParams(max_tokens=1, temperature=0.0)
            self.llm.generate([{"prompt_token_ids": [0, 1]}], probe, use_tqdm=False)
        except Exception as exc:
            shutil.rmtree(self.folder, ignore_errors=True)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineUnavailableError(
                f"data.rollout.engine=vllm cannot run this model ({type(inner).__name__}, dtype {dtype}): "
                f"{first}; use data.rollout.engine=hf") from exc
        finally:
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
        self.vllm = vllm

    def sync(self, model) -> None:
        """Put ``model``'s current weights into the engine and forget cached prefixes."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": hf_weights(model),
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()


def engine_for(model, tokenizer, max_model_len: int) -> _Engine:
    """The process's engine for this model shape, dtype and length limit (started on first use)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise EngineUnavailableError("data.rollout.engine=vllm runs one colocated engine per process and is not "
                                     "supported with several ranks (trainer.devices > 1): use data.rollout.engine=hf")
    param = next(model.parameters())
    if param.dtype not in DTYPES:
        raise EngineUnavailableError(f"data.rollout.engine=vllm cannot run a {param.dtype} model (allowed "
                                     f"{', '.join(DTYPES.values())}): set the student's dtype or engine=hf")
    inner = base_model(_unwrap(model))
    key = (inner.config.to_json_string(use_diff=False), param.dtype, max_model_len, param.device.type)
    if key not in _ENGINES:
        _ENGINES[key] = _Engine(model, tokenizer, DTYPES[param.dtype], max_model_len, param.device.type == "cpu")
    return _ENGINES[key]


class VLLMGenerator:
    """`Generator` on the shared vLLM engine of ``model``'s shape, holding ``model``'s weights as of now."""

    def __init__(self, model, tokenizer, seed: int = 0, max_model_len: int | None = None):
        limit = max_model_len or int(getattr(base_model(_unwrap(model)).config, "max_position_embeddings", 4096))
        self.engine = engine_for(model, tokenizer, limit)
        self.engine.sync(model)
        self.model, self.tokenizer, self.seed = model, tokenizer, seed
        stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(eot, int) and eot != getattr(tokenizer, "unk_token_id", None):
            stop.add(eot)
        self.stop_ids = sorted(i for i in stop if i is not None)
        self.stats = GenerationStats()
        self._calls = 0  # generate calls so far: part of every request's seed

    # the sampler state a stopped rollout keeps: the call counter (request seeds follow from it)
    def get_rng_state(self) -> torch.Tensor:
        return torch.tensor([self._calls], dtype=torch.long)

    def set_rng_state(self, state: torch.Tensor) -> None:
        self._calls = int(state[0])

    def end_sessions(self, session_ids: Sequence[Hashable]) -> None:
        """Nothing to free: vLLM's prefix cache keeps blocks by content and evicts them itself."""

    def request_seed(self, session: Hashable) -> int:
        digest = hashlib.blake2b(f"{self.seed}/{self._calls}/{session!r}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 2

    def _params(self, params: SamplingParams, session: Hashable):
        kw = dict(max_tokens=params.max_new_tokens, logprobs=0, stop=list(params.stop_strings),
                  include_stop_str_in_output=True, stop_token_ids=self.stop_ids)
        if params.greedy:
            kw.update(temperature=0.0)
        else:
            kw.update(temperature=params.temperature, top_p=params.top_p, seed=self.request_seed(session))
        return self.engine.vllm.SamplingParams(**kw)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 session_ids: Sequence[Hashable] | None = None, keep_cache: bool = False) -> list[Generation]:
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        sessions = list(session_ids) if session_ids is not None else list(range(len(prompts)))
        requests = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]
        sampling = [self._params(params, s) for s in sessions]
        t0 = time.perf_counter()
        outputs = self.engine.llm.generate(requests, sampling, use_tqdm=False)
        self.stats.decode_seconds += time.perf_counter() - t0
        self._calls += 1
        gens = []
        for prompt, out in zip(prompts, outputs, strict=True):
            o = out.outputs[0]
            ids = list(o.token_ids)
            lps = [float(o.logprobs[k][t].logprob) for k, t in enumerate(ids)]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            gens.append(Generation(ids, lps, text, o.finish_reason == "stop"))
            self.stats.prefill_tokens += len(prompt) - int(getattr(out, "num_cached_tokens", 0) or 0)
            self.stats.generated_tokens += len(ids)
        return gens
