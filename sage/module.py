"""The LightningModule: trainable student, frozen teacher, and the (SAGE-)OPD / GKD / SFT objective.

It builds the models (`configure_model`), hands the DataModule what the data side needs once
(`SageDataModule.connect`), and trains on the epoch plan the DataModule serves: one `MicroBatch` per
dataloader item (`sage.plan`). Optimization is manual because one optimizer step spans a variable number
of micro-batches: each carries its step's global normalization denominator and whether it is the step's
last, so gradient accumulation and the number of ranks never change the loss (docs/METHOD.md,
Normalization).
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from sage.distill.annotate import Annotator
from sage.distill.eval_kl import turn_kl
from sage.distill.fused import chunked_token_loss
from sage.distill.gate import make_gate
from sage.distill.judge_prompt import JudgePrompt
from sage.distill.loss_kinds import loss_kind
from sage.distill.objective import normalized, token_weights
from sage.distill.teacher import TeacherScorer
from sage.epoch import Epoch
from sage.forward import output_head, predicting, selected_hidden
from sage.models import (
    check_student_state,
    check_tokenizers,
    keep_adapter_inputs,
    load_model,
    load_tokenizer,
    shared_vocab_rows,
    vocab_rows,
)
from sage.plan import MicroBatch, Tokens
from sage.rollout.records import Episode
from sage.specs import (
    OBJECTIVES,
    ConfidenceSpec,
    GateSpec,
    LossSpec,
    ModelSpec,
    Objective,
    SpecError,
    check_choice,
)


class SageModule(L.LightningModule):
    """Student + frozen teacher. ``objective=distill`` covers SAGE-OPD, OPD and GKD (chosen by ``loss``,
    ``gate``, ``confidence``); ``objective=sft`` is token cross-entropy on served trajectories.

    Args:
        student: the trained model.
        teacher: the frozen teacher (judge, confidence, distillation target); null only with objective sft.
        objective: distill (the teacher's distribution is the target) or sft (cross-entropy on the served
            tokens, every token weight 1: needs gate.mode always, confidence.kind none, loss.normalize opd).
        loss: the per-token loss and its step-wide normalization.
        gate: the turn gate g_t (teacher judge, always, or a feedback rule).
        confidence: the teacher-confidence weight kappa per token.
        judge_prompt: the teacher judge's prompt text (null: the built-in prompt).
        optimizer: optimizer of the trainable student weights (default AdamW, lr 1e-5).
        lr_scheduler: stepped once per optimizer step that trains (null: constant learning rate).
        grad_clip: gradient norm clip per optimizer step (null or 0: no clipping).
    """

    def __init__(
        self,
        student: ModelSpec,
        teacher: ModelSpec | None = None,
        objective: Objective = "distill",
        loss: LossSpec | None = None,
        gate: GateSpec | None = None,
        confidence: ConfidenceSpec | None = None,
        judge_prompt: JudgePrompt | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        grad_clip: float | None = 1.0,
    ) -> None:
        super().__init__()
        check_choice("model.objective", objective, OBJECTIVES)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only the trainable student weights
        self.objective = objective
        self.loss_spec = loss or LossSpec()
        self.gate_spec = gate or GateSpec()
        self.confidence_spec = confidence or ConfidenceSpec()
        if objective == "sft":
            _check_sft_specs(self.gate_spec, self.confidence_spec, self.loss_spec)
        self.loss_kind = loss_kind(objective, self.loss_spec.divergence)
        self.judge_prompt = judge_prompt
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.grad_clip = grad_clip

        if objective == "distill" and teacher is None:
            raise ValueError("objective='distill' needs a teacher model (model.teacher)")
        self.student_spec, self.teacher_spec = student, teacher
        self.tokenizer = load_tokenizer(student.name_or_path)
        if teacher is not None:  # refuse a mismatch now, before a run folder or a model exists
            check_tokenizers(self.tokenizer, load_tokenizer(teacher.name_or_path))
        self.student = self.teacher = None
        self.vocab_rows: int | None = None
        # tokens per forward of the evaluation KL: the DataModule's micro-batch budget, handed over by
        # `connect` (8192 without a DataModule)
        self.eval_kl_budget = 8192
        self.annotator: Annotator | None = None
        self._acc: dict[str, float] = {}
        self._epoch_stats: dict[str, float] = {}

    def build_models(self, device: str | torch.device = "cpu", precision: str = "") -> None:
        """Build student and teacher once, straight on ``device`` in their target dtype, and the annotator."""
        if self.student is not None:
            return
        self.student = load_model(self.student_spec, device=device, trainable=True)
        self.vocab_rows = vocab_rows(self.student)
        if self.teacher_spec is not None:
            self.teacher = load_model(self.teacher_spec, device=device, trainable=False)
            # the tokenizers were compared in __init__; here only the heads' rows
            self.vocab_rows = shared_vocab_rows(self.tokenizer, vocab_rows(self.student), vocab_rows(self.teacher))
        if self.student_spec.lora is not None and "mixed" in precision:
            keep_adapter_inputs(self.student)
        self.annotator = self.make_annotator()

    def configure_model(self) -> None:
        """Lightning calls this before fit/validate and before restoring a checkpoint: the models are built
        on the trainer's device, then the DataModule receives what it needs from them, once."""
        self.build_models(self.trainer.strategy.root_device, str(self.trainer.precision))
        if self.trainer.datamodule is not None:
            self.eval_kl_budget = self.trainer.datamodule.connect(self.student, self.teacher, self.tokenizer,
                                                                  self.annotator, self.loss_spec.normalize)

    def setup(self, stage: str) -> None:
        strategy = type(self.trainer.strategy).__name__
        if "FSDP" in strategy:
            raise NotImplementedError(
                f"strategy {strategy} is not supported yet: rollouts call the student outside forward, which "
                "needs FSDP's summon_full_params, and LoRA mixes frozen and trainable weights in one unit. "
                "Use strategy=ddp (tested; README, Paper scale on a GPU)."
            )

    # -- the teacher's work on a rollout (used by the DataModule's epoch planner) -------------------
    def make_annotator(self) -> Annotator:
        """Gate + (when the loss reads the teacher) the teacher's one pass, from the current specs and models."""
        c, spec = self.confidence_spec, self.loss_spec
        gate = make_gate(self.gate_spec, self.judge_prompt, self.teacher, self.tokenizer)
        scorer = None
        if self.loss_kind.teacher:
            scorer = TeacherScorer(
                self.teacher, confidence_kind=c.kind, confidence_min=c.min, turn_average=c.turn_average,
                temperature=spec.temperature, vocab_rows=self.vocab_rows, chunk_tokens=spec.chunk_tokens,
                keep_hidden=self.loss_kind.teacher_hidden,
            )
        return Annotator(gate, scorer)

    # -- training -------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        opt = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.AdamW(params, lr=1e-5)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

    def micro_loss(self, tokens: Tokens, denominator: float) -> tuple[torch.Tensor, dict[str, float]]:
        """``sum(g * kappa * l)`` of one micro-batch over its step's global denominator.

        The student's hidden states at the response positions go through `chunked_token_loss` with what
        the loss kind reads from the teacher (`LOSS_KINDS`): its hidden states or log-probs from annotation,
        so no teacher decoder pass here. fp32 LM heads, chunks of tokens recomputed in backward."""
        ids, attn, lm = tokens.input_ids, tokens.attention_mask, tokens.loss_mask
        pred = lm[:, 1:]
        targets = ids[:, 1:][pred]
        weights = token_weights(pred, tokens.gate[:, 1:], tokens.confidence[:, 1:])[pred]
        s_hidden = selected_hidden(self.student, ids, attn, predicting(lm))
        spec, kind = self.loss_spec, self.loss_kind
        if kind.teacher_hidden and tokens.teacher_hidden is None:
            raise ValueError(f"loss {kind.name!r} needs the teacher's hidden states: annotate the episodes first")
        total = chunked_token_loss(
            s_hidden, output_head(self.student),
            tokens.teacher_hidden.to(s_hidden.device) if kind.teacher_hidden else None,
            output_head(self.teacher) if kind.teacher else None,
            targets, weights, kind.name, beta=spec.beta, temperature=spec.temperature if kind.teacher else 1.0,
            vocab_rows=self.vocab_rows, chunk_tokens=spec.chunk_tokens,
            teacher_target_logprobs=tokens.teacher_logprobs[:, 1:][pred] if kind.teacher_logprobs else None,
        )
        return normalized(total, denominator, spec.eps), {"tokens": float(pred.sum())}

    def training_step(self, mb: MicroBatch, batch_idx: int) -> torch.Tensor:
        """Loss of the micro-batch over its step's denominator, backward; the optimizer steps after the
        step's last micro-batch."""
        if mb.padding:  # an empty slot that keeps DDP ranks in step: zero loss, zero gradients
            loss = sum(p.sum() for p in self.trainable_parameters()) * 0.0
            stats = {"tokens": 0.0}
        else:
            loss, stats = self.micro_loss(mb.tokens, mb.denominator)
        # DDP averages gradients over ranks; the denominator is already the global sum
        self.manual_backward(loss * self.trainer.world_size)
        for k, v in {"loss": float(loss.detach()), **stats}.items():
            self._acc[k] = self._acc.get(k, 0.0) + v
        if mb.last:
            self._finish_step(mb.trains)
        return loss.detach()

    def _finish_step(self, trains: bool) -> None:
        # A step that trains no token (every turn skipped, on every rank: the sum is global) has no gradient;
        # an optimizer step would still move weights through AdamW's momentum.
        opt = self.optimizers()
        if trains:
            if self.grad_clip:
                self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
        opt.zero_grad(set_to_none=True)
        sched = self.lr_schedulers()
        if sched is not None and trains:
            sched.step()
        acc = torch.tensor([self._acc.get("loss", 0.0), self._acc.get("tokens", 0.0)], device=self.device)
        total = self.all_gather(acc)
        total = total.sum(0) if total.dim() > 1 else total
        # Per-step values go straight to the loggers, once per optimizer step: Lightning's own on_step
        # logging fires per dataloader item (micro-batch) and would repeat each value.
        step_metrics = {"train/tokens_per_step": float(total[1])}
        if trains:  # a skipped step's loss is exactly 0; logging it would only dilute the curve
            step_metrics["train/loss"] = float(total[0])
            self.log("train/loss_epoch", total[0], on_step=False, on_epoch=True, prog_bar=True, batch_size=1)
        for logger in self.loggers:
            logger.log_metrics(step_metrics, step=self.global_step)
        self.log("train/tokens_per_step_epoch", total[1], on_step=False, on_epoch=True, batch_size=1)
        self.log("train/skipped_step", float(not trains), on_step=False, on_epoch=True, reduce_fx="sum", batch_size=1)
        self._acc = {}

    def on_epoch_data(self, epoch: Epoch) -> None:
        """The epoch's rollout summary (`sage.epoch.publish`), logged at the epoch's end."""
        self._epoch_stats = dict(epoch.stats)

    def on_train_epoch_end(self) -> None:
        for k, v in self._epoch_stats.items():
            self.log(f"train/{k}", float(v), on_step=False, on_epoch=True, batch_size=1)
        self._epoch_stats = {}

    # -- evaluation -------------------------------------------------------------------------------
    def validation_step(self, episodes: list[Episode], batch_idx: int, dataloader_idx: int = 0):
        """The DataModule played the batch's games greedily with this student; with a teacher, each turn
        gets its reverse KL to the teacher (`Turn.eval_kl`); the evaluation callback
        (`callbacks.AlfworldEvaluation`) counts them."""
        if self.teacher is not None:
            per_turn = turn_kl(self.student, self.teacher, episodes, self.vocab_rows, self.eval_kl_budget,
                               self.loss_spec.chunk_tokens)
            for ep, scores in zip(episodes, per_turn, strict=True):
                for t, (kl, n) in zip(ep.turns, scores, strict=True):
                    t.eval_kl, t.eval_kl_tokens = kl, n
        return {"episodes": episodes, "split_index": dataloader_idx}

    # -- checkpoints: the trainable student only ---------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {f"student.{n}" for n, p in self.student.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another student (loading is non-strict, so it would load partially)."""
        expected = {f"student.{n}": p.shape for n, p in self.student.named_parameters() if p.requires_grad}
        source = checkpoint.get("hyper_parameters", {}).get("student")
        check_student_state(expected, checkpoint["state_dict"], self.hparams.get("student"), source)


def _check_sft_specs(gate: GateSpec, confidence: ConfidenceSpec, loss: LossSpec) -> None:
    """SFT trains every served token with weight 1 over a token mean: refuse settings it would ignore."""
    wrong = [f"{k}={v!r}" for k, v, want in (
        ("model.gate.mode", gate.mode, "always"), ("model.confidence.kind", confidence.kind, "none"),
        ("model.loss.normalize", loss.normalize, "opd")) if v != want]
    if wrong:
        raise SpecError(
            f"model.objective=sft trains every served token with weight 1, but {', '.join(wrong)}: set "
            "model.gate.mode always, model.confidence.kind none and model.loss.normalize opd (configs/sft.yaml does)"
        )
