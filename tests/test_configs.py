"""Every YAML in configs/ parses and instantiates through the real CLI, and each ablation really
changes what the loss uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from sage.cli import cli
from tests.helpers import make_episode, make_turn

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
FULL = sorted(p for p in CONFIGS.glob("*.yaml"))
OVERRIDES = sorted((CONFIGS / "ablations").glob("*.yaml")) + sorted((CONFIGS / "scale").glob("*.yaml"))
# Instantiate with tiny models: the configs' own models are SmolLM2 (slow on CPU) or hub ids (offline here).
TINY = ["--model.student.name_or_path", "tiny-random", "--model.student.num_layers", "2",
        "--model.student.dtype", "float32", "--model.student.lora", "null",
        "--model.student.gradient_checkpointing", "false"]
TINY_TEACHER = ["--model.teacher.name_or_path", "tiny-random", "--model.teacher.dtype", "float32"]
CPU = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]


def instantiate(configs: list[Path], extra: list[str] = ()):
    args = [a for c in configs for a in ("--config", str(c))] + TINY + list(extra) + CPU
    return cli(args=args, run=False)


def test_the_expected_configs_exist():
    names = {p.name for p in FULL}
    assert {"sage_opd.yaml", "opd.yaml", "gkd_jsd.yaml", "sft.yaml", "quickstart.yaml", "teacher_sft.yaml"} <= names
    assert {p.name for p in OVERRIDES} >= {"no_gate.yaml", "no_confidence.yaml", "no_norm.yaml", "paper_qwen2.5.yaml"}


@pytest.mark.parametrize("config", FULL, ids=lambda p: p.name)
def test_full_configs_parse_and_instantiate(config):
    has_teacher = "teacher: null" not in config.read_text()
    c = instantiate([config], TINY_TEACHER if has_teacher else [])
    assert c.model.student is None  # models are built by configure_model, on the trainer's device
    c.model.build_models()
    assert c.model.student is not None and (c.model.teacher is not None) == has_teacher
    assert c.datamodule.pool is None  # no environment is started by parsing


@pytest.mark.parametrize("override", OVERRIDES, ids=lambda p: p.name)
def test_override_configs_compose_with_sage_opd(override):
    c = instantiate([CONFIGS / "sage_opd.yaml", override], TINY_TEACHER)
    assert c.model.objective == "distill"


@pytest.mark.parametrize("name, teacher, student", [
    ("paper_qwen2.5.yaml", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"),
    ("paper_qwen3.yaml", "Qwen/Qwen3-8B", "Qwen/Qwen3-1.7B"),
])
def test_paper_scale_sets_the_paper_models(name, teacher, student):
    import yaml

    cfg = yaml.safe_load((CONFIGS / "scale" / name).read_text())
    assert cfg["model"]["teacher"]["name_or_path"] == teacher
    assert cfg["model"]["student"]["name_or_path"] == student
    assert cfg["model"]["student"]["lora"]["r"] > 0 and cfg["trainer"]["precision"] == "bf16-mixed"
    # the override only adds to sage_opd.yaml's loss: the method's divergence and normalization stay
    c = instantiate([CONFIGS / "sage_opd.yaml", CONFIGS / "scale" / name], TINY_TEACHER)
    assert (c.model.loss_spec.divergence, c.model.loss_spec.normalize, c.model.loss_spec.chunk_tokens) == (
        "reverse_kl", "weighted", 512)
    assert c.datamodule.val_games_per_rollout is None  # evaluation plays each split as one rollout stream


def test_qwen3_thinking_is_off_for_the_student_and_the_judge():
    c = instantiate([CONFIGS / "sage_opd.yaml", CONFIGS / "scale/paper_qwen3.yaml"], TINY_TEACHER)
    assert c.datamodule.rollout_spec.chat_template_kwargs == {"enable_thinking": False}
    assert c.model.judge_prompt.chat_template_kwargs == {"enable_thinking": False}


def _toggled(override: str | None):
    configs = [CONFIGS / "sage_opd.yaml"] + ([CONFIGS / "ablations" / override] if override else [])
    c = instantiate(configs, TINY_TEACHER)  # the overlays set the specs themselves
    c.model.build_models()
    return c.model


def test_each_ablation_changes_exactly_its_part():
    full = _toggled(None)
    assert (full.gate_spec.mode, full.confidence_spec.kind, full.loss_spec.normalize) == (
        "teacher_judge", "max_prob", "weighted")
    m = _toggled("no_gate.yaml")
    assert (m.gate_spec.mode, m.confidence_spec.kind, m.loss_spec.normalize) == ("always", "max_prob", "weighted")
    m = _toggled("no_confidence.yaml")
    assert (m.gate_spec.mode, m.confidence_spec.kind, m.loss_spec.normalize) == ("teacher_judge", "none", "weighted")
    m = _toggled("no_norm.yaml")
    assert (m.gate_spec.mode, m.confidence_spec.kind, m.loss_spec.normalize) == ("teacher_judge", "max_prob", "opd")


def test_ablations_change_what_the_loss_uses():
    """no_gate: no zero-weight turn; no_confidence: kappa = 1 on every token; no_norm: D = token count."""
    from sage.plan import plan_steps
    from sage.samples import window_samples

    def annotated(model):
        turns = [make_turn(k, context_ids=[1, 30 + k, 31], response_ids=[40, 41 + k]) for k in range(4)]
        eps = [make_episode(turns)]
        model.annotator(eps, "window")
        return eps

    full = annotated(_toggled(None))
    gates = [t.gate for t in full[0].turns]
    assert all(g in (0.0, 0.5, 1.0) for g in gates)
    assert any(c != 1.0 for t in full[0].turns for c in t.confidence)

    no_gate = annotated(_toggled("no_gate.yaml"))
    assert [t.gate for t in no_gate[0].turns] == [1.0] * 4 and {t.gate_label for t in no_gate[0].turns} == {"ALWAYS"}

    no_conf = annotated(_toggled("no_confidence.yaml"))
    samples = window_samples(no_conf)
    assert all(c == 1.0 for s in samples for c, m in zip(s.confidence, s.loss_mask, strict=True) if m)

    model = _toggled("no_norm.yaml")
    eps = annotated(model)
    step = plan_steps(window_samples(eps), 100, 10_000, 2, model.loss_spec.normalize, seed=0)[0]
    assert step.denominator == 8.0  # 4 turns x 2 response tokens, skipped turns included


@pytest.mark.parametrize("name", ["sage_opd.yaml", "opd.yaml", "gkd_jsd.yaml", "sft.yaml", "quickstart.yaml"])
def test_method_configs_checkpoint_inside_epochs(name):
    """One rolling last.ckpt, written every N optimizer steps (exact mid-epoch resume) and at epoch ends,
    atomically; no other checkpoint file (Lightning's ModelCheckpoint would add a top-k copy)."""
    from lightning.pytorch.callbacks import Checkpoint

    from sage.checkpointing import AtomicCheckpointIO, LastCheckpoint

    config = CONFIGS / name
    c = instantiate([config], TINY_TEACHER if "teacher: null" not in config.read_text() else [])
    checkpoints = [cb for cb in c.trainer.callbacks if isinstance(cb, Checkpoint)]
    assert len(checkpoints) == 1 and isinstance(checkpoints[0], LastCheckpoint)
    assert checkpoints[0].enabled and checkpoints[0].every_n_steps >= 1
    assert isinstance(c.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_the_trainer_bar_is_tqdm_like_the_phase_bars_unless_configured_otherwise(monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    monkeypatch.delenv("SAGE_PROGRESS", raising=False)  # pytest's stdout is no terminal: no bar, lines only
    assert instantiate([CONFIGS / "quickstart.yaml"], TINY_TEACHER).trainer.progress_bar_callback is None
    monkeypatch.setenv("SAGE_PROGRESS", "1")  # as on a terminal
    bar = instantiate([CONFIGS / "quickstart.yaml"], TINY_TEACHER).trainer.progress_bar_callback
    assert type(bar) is TQDMProgressBar
    off = instantiate([CONFIGS / "quickstart.yaml"], [*TINY_TEACHER, "--trainer.enable_progress_bar", "false"])
    assert off.trainer.progress_bar_callback is None
    named = instantiate([CONFIGS / "quickstart.yaml"], [*TINY_TEACHER, "--trainer.callbacks+", "RichProgressBar"])
    assert type(named.trainer.progress_bar_callback) is RichProgressBar


def test_every_module_and_data_key_has_help_text(capsys):
    """`sage fit --help` explains each SageModule and SageDataModule argument (their Args: docstrings)."""
    import inspect
    import re

    from sage.data import SageDataModule
    from sage.module import SageModule

    with pytest.raises(SystemExit):
        cli(args=["fit", "--help"])
    text = capsys.readouterr().out
    for prefix, cls in (("model", SageModule), ("data", SageDataModule)):
        for name in list(inspect.signature(cls.__init__).parameters)[1:]:
            match = re.search(rf"^(\S[^\n]*):\n  --{prefix}\.{name} CONFIG\n", text, re.M)  # a settings group
            if match is not None:
                help_text = match.group(1)
            else:  # the flag, its metavar, then the description (on the same line or the next ones)
                match = re.search(rf"^  --{prefix}\.{name} [^\n]*\n(?:\s{{10,}}[^\n]*\n)*", text, re.M)
                assert match, f"--{prefix}.{name} is not in --help"
                help_text = " ".join(match.group(0).split()[2:])
            assert not help_text.startswith("(type:") and "Path to a configuration file" not in help_text, (
                f"--{prefix}.{name} has no description: {help_text!r}")
