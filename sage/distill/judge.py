"""The teacher judge (gate mode ``teacher_judge``, SAGE; docs/METHOD.md, Turn gate): the teacher reads the
task, recent history, the student's response and the environment feedback, and its next-token
probabilities over the verdict labels give the gate g_t. No sampling, no reward, no won/done flag.
The other gate modes and the table of all of them: `sage.distill.gate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sage.distill.divergence import target_logprobs
from sage.distill.fused import head_logits
from sage.distill.judge_prompt import JudgePrompt
from sage.errors import InputError
from sage.forward import output_head
from sage.progress import Phase
from sage.rollout.chat import ChatCodec
from sage.rollout.records import Episode
from sage.scoring import Row, scored_batches
from sage.shipped import BIAS_ATTR
from sage.specs import GateSpec


class JudgeLabelError(InputError, ValueError):
    """Judge labels that the teacher's tokenizer cannot tell apart."""


class TeacherJudge:
    """Fills ``turn.gate_label``, ``turn.gate`` and ``turn.gate_probs`` for every turn of the episodes.

    The labels and their gates come from the `GateSpec` (validated there). ``spec.scoring``:
    ``first_token`` reads p(first token of each label) from one forward per prompt; ``full`` scores each
    whole label continuation (sum of token log-probs, one forward per prompt x label); ``auto`` uses
    ``first_token`` when the labels' first tokens are distinct, else ``full``. Probabilities are
    renormalized over the label set; the label is their argmax. A teacher shipped with a label calibration
    (`sage.shipped`, ``spec.calibrated``) has its per-label offsets added to the log-probabilities first:
    ``gate_probs`` are then the calibrated probabilities.
    """

    def __init__(self, spec: GateSpec, model, tokenizer, prompt: JudgePrompt | None = None):
        if model is None or tokenizer is None:
            raise ValueError("gate mode 'teacher_judge' needs the teacher model and its tokenizer")
        self.labels, self.weights = tuple(spec.labels), spec.label_weights()
        self.judge_history, self.max_batch, self.scoring = spec.judge_history, spec.max_batch, spec.scoring
        self.prompt = prompt or JudgePrompt()
        self.model, self.tokenizer = model, tokenizer
        table = (getattr(model, BIAS_ATTR, None) or {}) if spec.calibrated else {}
        offsets = table.get(",".join(self.labels))
        self.bias = None if offsets is None else torch.tensor([offsets[lab] for lab in self.labels], dtype=torch.float64)

    @classmethod
    def from_spec(cls, spec: GateSpec, prompt: JudgePrompt | None, teacher, tokenizer) -> TeacherJudge:
        return cls(spec, teacher, tokenizer, prompt)

    def prompt_text(self, episode: Episode, k: int) -> str:
        """The judge prompt for turn k as text (chat template + assistant header + answer prefix)."""
        t = episode.turns[k]
        first = max(0, k - self.judge_history)
        history = [(h.observation, h.action) for h in episode.turns[first:k]] if self.judge_history > 0 else []
        msgs = self.prompt.messages(
            self.labels, episode.task, history, t.observation, t.response_text, t.feedback, t.action, t.admissible
        )
        return ChatCodec(self.tokenizer, self.prompt.chat_template_kwargs or {}).render(msgs) + self.prompt.answer_prefix

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def label_token_ids(self, prompt_text: str) -> list[list[int]]:
        """Token ids of each label as it continues ``prompt_text``: after a non-space character a
        separating space is added, and the tokens are cut from the tokenization of prompt + label so that
        word-initial (leading-space) forms match what the teacher would actually emit."""
        sep = " " if prompt_text and not prompt_text[-1].isspace() else ""
        prefix = self._encode(prompt_text)
        out = []
        for label in self.labels:
            full = self._encode(prompt_text + sep + label)
            ids = full[len(prefix):] if full[: len(prefix)] == prefix else self._encode(sep + label)
            if not ids:
                raise JudgeLabelError(f"label {label!r} tokenizes to nothing")
            out.append(ids)
        if len({tuple(i) for i in out}) != len(out):
            ids = ", ".join(f"{label!r} -> {i}" for label, i in zip(self.labels, out, strict=True))
            raise JudgeLabelError(
                f"judge labels {list(self.labels)} are not distinguishable after tokenization ({ids}): the "
                "teacher could not express a verdict. Use labels this tokenizer keeps apart (e.g. words it knows)"
            )
        return out

    def use_first_token(self, label_ids: list[list[int]]) -> bool:
        distinct = len({ids[0] for ids in label_ids}) == len(label_ids)
        if self.scoring == "first_token" and not distinct:
            raise JudgeLabelError(f"labels {self.labels} share a first token: use scoring='full' or 'auto'")
        return self.scoring == "first_token" or (self.scoring == "auto" and distinct)

    @torch.no_grad()
    def label_logprobs(self, prompts: list[list[int]], label_ids: list[list[int]], phase: Phase | None = None) -> torch.Tensor:
        """``[N, n_labels]`` log-probabilities of each label after each prompt (not yet renormalized);
        `phase` (progress display) advances by prompts scored."""
        n_lab = len(label_ids)
        first_token = self.use_first_token(label_ids)
        if first_token:  # one row per prompt, scoring the token after it (a label's first token)
            rows = [Row(p, [len(p)]) for p in prompts]
        else:  # one row per (prompt, label), row-major, scoring the label's tokens
            rows = [Row(p + ids, list(range(len(p), len(p) + len(ids)))) for p in prompts for ids in label_ids]
        head = output_head(self.model)
        first = torch.tensor([ids[0] for ids in label_ids])
        out = torch.zeros(len(rows), n_lab if first_token else 1, dtype=torch.float64)
        for batch in scored_batches([self.model], rows, max_tokens=1 << 62, max_rows=self.max_batch):
            (hidden,) = batch.hidden
            logits = head_logits(hidden, head)  # float32, one row per scored position, rows in batch order
            if first_token:
                lp = torch.log_softmax(logits, dim=-1)[:, first.to(logits.device)]
            else:
                per_token = target_logprobs(logits, batch.targets.to(logits.device))
                lp = torch.stack([part.sum() for part in per_token.split(batch.counts)])[:, None]
            out[torch.tensor(batch.rows)] = lp.double().cpu()
            if phase is not None:
                phase.update(len(batch.rows) if first_token else len(batch.rows) / n_lab)
        return out.view(len(prompts), n_lab)

    def judge(self, episodes: Sequence[Episode]) -> None:
        items = [(e, k) for e in episodes for k in range(len(e.turns))]
        if not items:
            return
        texts = [self.prompt_text(e, k) for e, k in items]
        label_ids = self.label_token_ids(texts[0])
        with Phase("judge", total=len(items), unit="turn") as phase:
            logp = self.label_logprobs([self._encode(s) for s in texts], label_ids, phase)
            probs = torch.softmax(logp if self.bias is None else logp + self.bias, dim=-1)
            for (e, k), p in zip(items, probs, strict=True):
                t = e.turns[k]
                t.gate_probs = {lab: float(x) for lab, x in zip(self.labels, p, strict=True)}
                t.gate_label = self.labels[int(p.argmax())]
                t.gate = float(self.weights[t.gate_label])
            counts = {lab: sum(e.turns[k].gate_label == lab for e, k in items) for lab in self.labels}
            phase.close(f"{len(items)} turns: " + ", ".join(f"{lab} {n}" for lab, n in counts.items()))
