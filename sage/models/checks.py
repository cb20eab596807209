"""Can these models work together: one tokenizer for student and teacher, logit rows both heads share, and
a checkpoint whose weights fit this student."""

from __future__ import annotations

import logging

import torch

from sage.errors import InputError

log = logging.getLogger(__name__)


class TokenizerMismatchError(InputError, ValueError):
    """Student and teacher do not share a vocabulary, so token-level distillation would compare different tokens."""


class CheckpointMismatchError(InputError, ValueError):
    """A checkpoint whose student weights do not fit this student (another model, size or LoRA setting)."""


def check_tokenizers(student_tok, teacher_tok) -> None:
    """Refuse a student and a teacher whose tokenizers map tokens to different ids or special tokens (checked
    before any model is built; `shared_vocab_rows` then checks the heads once they exist)."""
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

