"""Model loading: tiny random models, LoRA, frozen teachers, truncation, errors, tokenizer checks, SmolLM2."""

import copy
import shutil

import pytest
import torch

from sage.models import (
    TokenizerMismatchError,
    check_tokenizers,
    load_model,
    load_tokenizer,
    resolve_dtype,
    shared_vocab_rows,
    smollm2_path,
    vocab_rows,
)
from sage.specs import LoraSpec, ModelSpec
from tests.helpers import tiny_model, tiny_tokenizer


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_random_is_deterministic_and_shaped_like_smollm2():
    before = torch.get_rng_state()
    a = load_model(ModelSpec("tiny-random", seed=0))
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is left alone
    assert _same_weights(a, load_model("tiny-random", seed=0))
    assert not _same_weights(a, load_model("tiny-random", seed=1))
    cfg = a.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 4, 2)
    assert (cfg.intermediate_size, vocab_rows(a), cfg.eos_token_id) == (128, 49152, 2)
    assert load_model("tiny-random", num_layers=3).config.num_hidden_layers == 3


def test_lora_wraps_and_only_adapters_train():
    model = load_model(ModelSpec("tiny-random", lora=LoraSpec(r=4, alpha=8, dropout=0.0)))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_" in n for n in trainable if "mlp" in n) and any("self_attn" in n for n in trainable)
    model(input_ids=torch.tensor([[1, 5, 9]])).logits.sum().backward()
    full = load_model("tiny-random")
    assert full.training and all(p.requires_grad for p in full.parameters())


def test_frozen_teacher():
    teacher = load_model("tiny-random", trainable=False)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="LoRA"):
        load_model(ModelSpec("tiny-random", lora=LoraSpec()), trainable=False)


def test_dtype_and_errors(tmp_path):
    assert next(load_model("tiny-random", dtype="bfloat16", trainable=False).parameters()).dtype == torch.bfloat16
    assert next(load_model("tiny-random", dtype="float64").parameters()).dtype == torch.float64
    with pytest.raises(ValueError, match="dtype='float8'; allowed: auto, float32"):
        load_model("tiny-random", dtype="float8")
    with pytest.raises(ValueError, match="float32 master"):  # full fine-tuning needs float32 weights
        load_model("tiny-random", dtype="bfloat16")
    with pytest.raises(ValueError, match="init='scratch'; allowed: pretrained, random"):
        ModelSpec("tiny-random", init="scratch")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_tokenizer(str(tmp_path / "missing"))


def test_local_folder_and_layer_truncation(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2)
    full = Qwen2ForCausalLM(cfg)
    full.save_pretrained(tmp_path / "qwen")
    small = load_model(str(tmp_path / "qwen"), num_layers=2)
    assert len(small.model.layers) == 2 and small.config.num_hidden_layers == 2
    assert small.config.layer_types == ["full_attention"] * 2
    for kept, orig in zip(small.model.layers, full.model.layers[:2], strict=True):
        assert _same_weights(kept, orig)
    ids = torch.tensor([[3, 4, 5]])
    assert small(input_ids=ids).logits.shape == (1, 3, 256)
    with pytest.raises(ValueError, match="num_layers=5"):
        load_model(str(tmp_path / "qwen"), num_layers=5)


def test_check_tokenizers_same_and_padded_vocab():
    tok = tiny_tokenizer()
    check_tokenizers(tok, tiny_tokenizer())
    assert shared_vocab_rows(tok, 49152, 49152) == 49152
    padded = tiny_model(vocab_size=49152 + 64)
    assert shared_vocab_rows(tok, 49152, vocab_rows(padded)) == 49152
    with pytest.raises(TokenizerMismatchError, match="logit rows"):
        shared_vocab_rows(tok, 49152, 1000)


def test_check_tokenizers_mismatches():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = tiny_tokenizer()
    extra = copy.deepcopy(tok)
    extra.add_tokens(["<extra_tool>"])
    with pytest.raises(TokenizerMismatchError, match="<extra_tool>"):
        check_tokenizers(tok, extra)
    other = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1}, unk_token="<unk>")),
        eos_token="hello",
    )
    with pytest.raises(TokenizerMismatchError, match="differ first at token"):
        check_tokenizers(tok, other)
    eos = copy.deepcopy(tok)
    eos.eos_token = "<|endoftext|>"
    with pytest.raises(TokenizerMismatchError, match="eos_token"):
        check_tokenizers(tok, eos)


def test_smollm2_offline_conversion_and_quickstart_student():
    path = smollm2_path()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    tok = load_tokenizer("smollm2-135m-instruct")
    assert len(tok) == 49152 and tok.eos_token_id == 2 and tok.pad_token_id == 2
    assert tok.convert_tokens_to_ids("<|im_start|>") == 1 and tok.model_max_length == 8192
    assert tok.padding_side == "left"
    student = load_model("smollm2-135m-instruct", num_layers=6, trainable=False)
    assert vocab_rows(student) == 49152 and student.config.num_hidden_layers == 6
    check_tokenizers(tok, tiny_tokenizer())
    assert shared_vocab_rows(tok, vocab_rows(student), 49152) == 49152


def test_auto_dtype_is_bf16_only_for_untrained_weights_on_a_gpu():
    assert resolve_dtype("auto", "cuda", trained=False) == torch.bfloat16  # teacher, LoRA base
    assert resolve_dtype("auto", "cuda", trained=True) == torch.float32  # fully trained student: master weights
    assert resolve_dtype("auto", "cpu", trained=False) == torch.float32
    assert next(load_model("tiny-random", trainable=False).parameters()).dtype == torch.float32


def _tiny_qwen3_folder(tmp_path):
    """A tiny Qwen3-architecture config (q/k norms, explicit head_dim, padded vocabulary) + SmolLM2's tokenizer."""
    from transformers import Qwen3Config

    folder = tmp_path / "qwen3"
    Qwen3Config(vocab_size=49152 + 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                bos_token_id=1, eos_token_id=2, pad_token_id=2).save_pretrained(folder)
    for f in smollm2_path().iterdir():
        if f.name.startswith("tokenizer") or f.suffix == ".jinja":
            shutil.copy(f, folder / f.name)
    return folder


def test_tiny_qwen3_loads_with_lora_generates_and_trains(tmp_path):
    from sage.distill.fused import chunked_token_loss
    from sage.forward import base_model, output_head, pad_right, predicting, selected_hidden
    from sage.rollout.generation import HFGenerator, SamplingParams

    folder = _tiny_qwen3_folder(tmp_path)
    spec = ModelSpec(str(folder), init="random", dtype="float64", lora=LoraSpec(r=2, alpha=4, dropout=0.0))
    model, again = load_model(spec), load_model(spec)
    assert type(base_model(model)).__name__ == "Qwen3ForCausalLM"
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert "lora_" in k or torch.equal(a, b)  # init="random" is seeded (adapters follow the global seed)
    tok = load_tokenizer(str(folder))
    check_tokenizers(tok, tiny_tokenizer())
    assert shared_vocab_rows(tok, vocab_rows(model), 49152) == 49152
    # generation: batched equals one by one (float64), the padded head rows are never sampled
    model.eval()
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("go to the desk 1", "take mug")]
    greedy = SamplingParams(greedy=True, max_new_tokens=6, stop_strings=())
    batched = HFGenerator(model, tok).generate(prompts, greedy)
    for p, b in zip(prompts, batched, strict=True):
        assert b.token_ids == HFGenerator(model, tok).generate([p], greedy)[0].token_ids
        assert all(t < len(tok) for t in b.token_ids)
    # training: the loss reaches the adapters and only them
    model.train()
    ids, attn = pad_right([p + b.token_ids for p, b in zip(prompts, batched, strict=True)])
    targets = torch.zeros_like(ids, dtype=torch.bool)
    targets[:, 2:] = attn[:, 2:].bool()
    hidden = selected_hidden(model, ids, attn, predicting(targets))
    loss = chunked_token_loss(hidden, output_head(model), None, None, ids[targets],
                              torch.ones(int(targets.sum()), dtype=torch.float64), "sft", chunk_tokens=3)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n and g is not None for n, g in grads.items())


def test_chat_template_kwargs_reach_the_template():
    from sage.rollout.chat import ChatCodec

    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}"
                         "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
                         "{% endif %}")
    msgs = [{"role": "user", "content": "hi"}]
    assert ChatCodec(tok).render(msgs) == "hi"
    assert ChatCodec(tok, {"enable_thinking": False}).render(msgs) == "hi<think></think>"


def test_hub_probe_gives_up_within_its_timeout():
    """An endpoint that refuses, and one that accepts the connection but never answers, both count as
    unreachable, the second after the probe's timeout rather than the OS's."""
    import socket
    import time

    from sage.models.hub import _hub_unreachable

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections queue in the backlog; nobody ever reads or answers
        port = silent.getsockname()[1]
        t0 = time.perf_counter()
        reason = _hub_unreachable(f"http://127.0.0.1:{port}", timeout=0.5)
        waited = time.perf_counter() - t0
    assert reason is not None and f"http://127.0.0.1:{port}" in reason
    assert waited < 5  # a hang guard: the probe is bounded by its own timeout (0.5 s)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert "cannot be reached" in _hub_unreachable(f"http://127.0.0.1:{closed}", timeout=0.5)


def test_hub_id_online_goes_to_the_hub_client_as_before(monkeypatch):
    """With a Hub that answers (here a local stand-in), a hub id is passed on unchanged, not local-only."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import huggingface_hub.constants

    import sage.models.hub as hub
    from sage.models import resolve_name

    class Hub(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setattr(hub, "_HUB_STATUS", {})
        assert hub.hub_offline_reason() is None
        assert resolve_name("sage-test/not-downloaded") == ("sage-test/not-downloaded", False)
    finally:
        server.shutdown()
        server.server_close()
