"""The LightningModule: trainable student, frozen teacher, and the (SAGE-)OPD / GKD / SFT objective.

Optimization is manual because one optimizer step spans a variable number of token-budget
micro-batches (one dataloader item each, see `sage.batching`): every item carries its step's global
normalization denominator and a `step_end` flag, so gradient accumulation and the number of ranks
never change the loss (METHOD.md, Normalization).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from sage.distill.fused import chunked_token_loss
from sage.distill.judge import JudgePrompt, TurnJudge
from sage.distill.objective import LossSpec, token_weights
from sage.distill.specs import ConfidenceSpec, GateSpec
from sage.distill.teacher import TeacherScorer
from sage.forward import output_head, predicting, selected_hidden
from sage.models import (
    ModelSpec,
    check_tokenizers,
    keep_adapter_inputs,
    load_model,
    load_tokenizer,
    vocab_rows,
)
from sage.rollout.records import Episode

OBJECTIVES = ("distill", "sft")


class SageModule(L.LightningModule):
    """Student + frozen teacher. `objective="distill"` covers SAGE-OPD, OPD and GKD (chosen by `loss`,
    `gate`, `confidence`); `objective="sft"` is token cross-entropy on served trajectories."""

    def __init__(
        self,
        student: ModelSpec,
        teacher: ModelSpec | None = None,
        objective: Literal["distill", "sft"] = "distill",
        loss: LossSpec | None = None,
        gate: GateSpec | None = None,
        confidence: ConfidenceSpec | None = None,
        judge_prompt: JudgePrompt | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        grad_clip: float | None = 1.0,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}; allowed: {', '.join(OBJECTIVES)}")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only the trainable student weights
        self.objective = objective
        self.loss_spec = loss or LossSpec()
        self.gate_spec = gate or GateSpec()
        self.confidence_spec = confidence or ConfidenceSpec()
        if objective == "sft":  # SFT trains every served token with weight 1
            self.gate_spec = replace(self.gate_spec, mode="always")
            self.confidence_spec = replace(self.confidence_spec, kind="none")
            self.loss_spec = replace(self.loss_spec, normalize="opd")
        self.judge_prompt = judge_prompt
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.grad_clip = grad_clip

        if objective == "distill" and teacher is None:
            raise ValueError("objective='distill' needs a teacher model (model.teacher)")
        self.student_spec, self.teacher_spec = student, teacher
        self.tokenizer = load_tokenizer(student.name_or_path)
        self._teacher_tokenizer = None
        if teacher is not None:  # refuse a mismatch now, before a run folder or a model exists
            self._teacher_tokenizer = load_tokenizer(teacher.name_or_path)
            check_tokenizers(self.tokenizer, self._teacher_tokenizer)
        self.student = self.teacher = None
        self.vocab_rows: int | None = None
        self._acc: dict[str, float] = {}
        self.epoch_stats: dict[str, float] = {}

    def configure_model(self, device: str | torch.device | None = None) -> None:
        """Build student and teacher once, straight on the trainer's device in their target dtype (Lightning
        calls this before fit/validate and before restoring a checkpoint); without a trainer, on ``device``
        (default CPU)."""
        if self.student is not None:
            return
        if device is None:
            device = self._trainer.strategy.root_device if self._trainer is not None else "cpu"
        self.student = load_model(self.student_spec, device=device, trainable=True)
        self.vocab_rows = vocab_rows(self.student)
        if self.teacher_spec is not None:
            self.teacher = load_model(self.teacher_spec, device=device, trainable=False)
            self.vocab_rows = check_tokenizers(
                self.tokenizer, self._teacher_tokenizer, vocab_rows(self.student), vocab_rows(self.teacher)
            )
        precision = str(self._trainer.precision) if self._trainer is not None else ""
        if self.student_spec.lora is not None and "mixed" in precision:
            keep_adapter_inputs(self.student)

    def setup(self, stage: str) -> None:
        strategy = type(self.trainer.strategy).__name__
        if "FSDP" in strategy:
            raise NotImplementedError(
                f"strategy {strategy} is not supported yet: rollouts call the student outside forward, which "
                "needs FSDP's summon_full_params, and LoRA mixes frozen and trainable weights in one unit. "
                "Use strategy=ddp (tested), or deepspeed/fsdp after adding that (see README, Scale-out)."
            )

    # -- data annotation (called by the DataModule after each rollout) -------------------------
    @torch.no_grad()
    def annotate(self, episodes: list[Episode], transcript: bool) -> dict[str, float]:
        """Gate every turn (judge), then the teacher's one pass over the student's tokens (distillation):
        kappa and log pi_T per token, and the teacher's hidden states the loss will need.

        Only turns with g_t > 0 are scored: a skipped turn's weight is 0 whatever kappa is (and it adds
        only its token count to the `opd` denominator), so scoring it would be wasted teacher time.
        Returns the seconds each part took (`judge_seconds`, `score_seconds`)."""
        t0 = time.perf_counter()
        g = self.gate_spec
        judge = TurnJudge(
            mode=g.mode, labels=g.labels, weak_weight=g.weak_weight, history_len=g.history_len,
            prompt=self.judge_prompt, model=self.teacher, tokenizer=self.tokenizer, max_batch=g.max_batch,
        )
        judge.judge(episodes)
        t1 = time.perf_counter()
        if self.objective != "distill":
            return {"judge_seconds": t1 - t0, "score_seconds": 0.0}
        c, spec = self.confidence_spec, self.loss_spec
        scorer = TeacherScorer(
            self.teacher, confidence_kind=c.kind, confidence_min=c.min, turn_average=c.turn_average,
            temperature=spec.temperature, vocab_rows=self.vocab_rows, chunk_tokens=spec.chunk_tokens,
            keep_hidden=spec.divergence != "sampled_reverse_kl",  # that loss reads only log pi_T(y)
        )
        if transcript:
            scorer.score_episodes([ep for ep in episodes if any(t.gate > 0 for t in ep.turns)])
        else:
            scorer.score_turns([t for ep in episodes for t in ep.turns if t.gate > 0])
        return {"judge_seconds": t1 - t0, "score_seconds": time.perf_counter() - t1}

    # -- training -------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        opt = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.AdamW(params, lr=1e-5)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

    def micro_loss(self, item: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one micro-batch, already divided by its step's global denominator.

        The student's hidden states at the response positions go through `chunked_token_loss` with the
        teacher's hidden states from annotation: fp32 LM heads, chunks of tokens recomputed in backward, and
        no teacher decoder pass here."""
        ids, attn, lm = item["input_ids"], item["attention_mask"], item["loss_mask"]
        pred = lm[:, 1:]
        targets = ids[:, 1:][pred]
        weights = token_weights(pred, item["gate"][:, 1:], item["confidence"][:, 1:])[pred]
        s_hidden = selected_hidden(self.student, ids, attn, predicting(lm))
        spec = self.loss_spec
        kind = "sft" if self.objective == "sft" else spec.divergence
        t_hidden = item.get("teacher_hidden")
        if kind not in ("sft", "sampled_reverse_kl") and t_hidden is None:
            raise ValueError(f"divergence {kind!r} needs the teacher's hidden states: annotate the episodes first")
        total = chunked_token_loss(
            s_hidden, output_head(self.student),
            None if t_hidden is None else t_hidden.to(s_hidden.device),
            None if self.teacher is None else output_head(self.teacher),
            targets, weights, kind, beta=spec.beta, temperature=1.0 if kind == "sft" else spec.temperature,
            vocab_rows=self.vocab_rows, chunk_tokens=spec.chunk_tokens,
            teacher_target_logprobs=item["teacher_logprobs"][:, 1:][pred] if kind == "sampled_reverse_kl" else None,
        )
        denominator = item["denominator"].to(total.device, total.dtype).clamp(min=spec.eps)
        return total / denominator, {"tokens": float(pred.sum())}

    def training_step(self, item: dict, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        world = self.trainer.world_size
        if "input_ids" in item:
            loss, stats = self.micro_loss(item)
        else:  # an empty slot that keeps DDP ranks in step: zero loss, zero gradients
            loss = sum(p.sum() for p in self.trainable_parameters()) * 0.0
            stats = {"tokens": 0.0}
        self.manual_backward(loss * world)
        for k, v in {"loss": float(loss.detach()), **stats}.items():
            self._acc[k] = self._acc.get(k, 0.0) + v
        if item["step_end"]:
            self._finish_step(opt, float(item.get("step_weight", item["denominator"])))
        return loss.detach()

    def _finish_step(self, opt, step_weight: float) -> None:
        # No token of the step carries weight (every turn skipped, on every rank: the sum is global), so
        # there is no gradient; an optimizer step would still move weights through AdamW's momentum.
        skipped = step_weight <= 0
        if not skipped:
            if self.grad_clip:
                self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
        opt.zero_grad(set_to_none=True)
        sched = self.lr_schedulers()
        if sched is not None and not skipped:
            sched.step()
        acc = torch.tensor([self._acc.get("loss", 0.0), self._acc.get("tokens", 0.0)], device=self.device)
        total = self.all_gather(acc)
        total = total.sum(0) if total.dim() > 1 else total
        # Per-step values go straight to the loggers, once per optimizer step: Lightning's own on_step
        # logging fires per dataloader item (micro-batch) and would repeat each value.
        step_metrics = {"train/tokens_per_step": float(total[1])}
        if not skipped:  # a skipped step's loss is exactly 0; logging it would only dilute the curve
            step_metrics["train/loss"] = float(total[0])
            self.log("train/loss_epoch", total[0], on_step=False, on_epoch=True, prog_bar=True, batch_size=1)
        for logger in self.loggers:
            logger.log_metrics(step_metrics, step=self.global_step)
        self.log("train/tokens_per_step_epoch", total[1], on_step=False, on_epoch=True, batch_size=1)
        self.log("train/skipped_step", float(skipped), on_step=False, on_epoch=True, reduce_fx="sum", batch_size=1)
        self._acc = {}

    def on_train_epoch_end(self) -> None:
        for k, v in self.epoch_stats.items():
            self.log(f"train/{k}", float(v), on_step=False, on_epoch=True, batch_size=1)

    # -- evaluation -------------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        if isinstance(batch, list):  # evaluation games: nothing to move
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def validation_step(self, games, batch_idx: int, dataloader_idx: int = 0):
        dm = self.trainer.datamodule
        return {"episodes": dm.play(games, greedy=True), "split_index": dataloader_idx}

    # -- checkpoints: the trainable student only ---------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {f"student.{n}" for n, p in self.student.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another student (loading is non-strict, so it would load partially)."""
        from sage.models import check_student_state

        expected = {f"student.{n}": p.shape for n, p in self.student.named_parameters() if p.requires_grad}
        source = checkpoint.get("hyper_parameters", {}).get("student")
        check_student_state(expected, checkpoint["state_dict"], self.hparams.get("student"), source)
