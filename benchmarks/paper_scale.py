"""A slice of one real training epoch at the paper's model shapes, phase by phase.

Randomly initialised models of the real architectures (shapes from the published configs; the bundled
SmolLM2 tokenizer, with the models' padded vocabularies) play real ALFWorld games through the real
`SageDataModule` / `SageModule` / Lightning `Trainer` path for one epoch: rollout, judge, teacher
scoring (the teacher's one pass), then the training micro-batches (student forward + backward, loss
from the stored teacher states). Printed per phase: seconds, tokens/s, achieved FLOP/s and its share of
a matmul probe measured in the same run, and peak memory; then one paper epoch (128 games x 50 turns)
extrapolated with the formula printed. Random weights are right for throughput and memory (responses
run to max_new_tokens: the worst case), never for success rates.

    python benchmarks/paper_scale.py --device cpu --scale tiny                 # smoke test, minutes on a CPU
    python benchmarks/paper_scale.py --device cuda --scale paper --family qwen2.5
    python benchmarks/paper_scale.py --device cpu --scale tiny --estimate h100 # + an H100 estimate (counted)
    python benchmarks/paper_scale.py --device cuda --scale paper --engine all  # each installed rollout engine
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from counting import Shape, matmul_probe, sync

from sage.data import SageDataModule
from sage.distill.judge import TeacherJudge
from sage.distill.teacher import TeacherScorer
from sage.envs import EnvPool, find_games
from sage.forward import base_model
from sage.models import SMOLLM2_BOS, SMOLLM2_EOS, smollm2_path
from sage.module import SageModule
from sage.rollout.generation import HFGenerator
from sage.specs import GateSpec, LoraSpec, LossSpec, ModelSpec, RolloutSpec

# Published shapes (config.json of each model on the Hugging Face hub).
ARCHS = {
    "qwen2.5": {
        "student": ("qwen2", "Qwen2.5-1.5B-Instruct", dict(
            hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
            num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)),
        "teacher": ("qwen2", "Qwen2.5-7B-Instruct", dict(
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)),
    },
    "qwen3": {
        "student": ("qwen3", "Qwen3-1.7B", dict(
            hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True)),
        "teacher": ("qwen3", "Qwen3-8B", dict(
            hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False)),
    },
}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
DEVICES = {"h100": (989e12, 3.35e12)}  # dense bf16 FLOP/s and HBM bytes/s (datasheet)
PAPER_GAMES, PAPER_TURNS, PAPER_WORKERS = 128, 50, 8


def make_config(kind: str, shape: dict, tiny: bool):
    from transformers import Qwen2Config, Qwen3Config

    shape = dict(shape, **TINY) if tiny else dict(shape)
    if tiny:
        shape.pop("head_dim", None)
    cls = Qwen2Config if kind == "qwen2" else Qwen3Config
    return cls(**shape, rope_theta=1e6, max_position_embeddings=32768, rms_norm_eps=1e-6,
               bos_token_id=SMOLLM2_BOS, eos_token_id=SMOLLM2_EOS, pad_token_id=SMOLLM2_EOS)


def model_folder(root: Path, name: str, config, tokenizer_dir: Path) -> Path:
    """A folder with the architecture's config.json and the tokenizer: loaded by ModelSpec(init="random")."""
    folder = root / name
    config.save_pretrained(folder)
    for f in tokenizer_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja") or f.name == "special_tokens_map.json":
            shutil.copy(f, folder / f.name)
    return folder


class Counter:
    """Token counts of every decoder forward, by phase (set by the wrapped entry points below)."""

    phase = "other"

    def __init__(self):
        self.counts: dict[str, dict[str, float]] = {}

    def hook(self, who: str):
        def pre(_module, args, kwargs):
            mask = kwargs.get("attention_mask")
            if mask is None or mask.dim() != 2:  # the rollout's ragged 4D masks: counted by GenerationStats
                return
            real = mask.sum(1).double()
            c = self.counts.setdefault(f"{who}:{Counter.phase}", {"calls": 0, "tokens": 0.0, "attended": 0.0})
            c["calls"] += 1
            c["tokens"] += float(real.sum())
            c["attended"] += float((real * (real + 1) / 2).sum())

        return pre

    def get(self, key: str) -> dict[str, float]:
        return self.counts.get(key, {"calls": 0, "tokens": 0.0, "attended": 0.0})


def timed(cls, name: str, clock: dict) -> None:
    """Wrap cls.name to add its wall time to clock[name]."""
    inner = getattr(cls, name)

    def wrapped(*a, **k):
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            clock[name] = clock.get(name, 0.0) + time.perf_counter() - t

    setattr(cls, name, wrapped)


def in_phase(cls, name: str, phase: str) -> None:
    """Wrap cls.name so that decoder forwards inside it are counted under `phase`."""
    inner = getattr(cls, name)

    def wrapped(*a, **k):
        before, Counter.phase = Counter.phase, phase
        try:
            return inner(*a, **k)
        finally:
            Counter.phase = before

    setattr(cls, name, wrapped)


class StepTimer(L.Callback):
    """Wall time of the training micro-batches (device synchronised) and the response tokens they train."""

    def __init__(self):
        self.seconds, self.trained_tokens, self._t = 0.0, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        sync()
        self._t = time.perf_counter()
        if not batch.padding:  # a sage.plan.MicroBatch
            t = batch.tokens
            self.trained_tokens += int((t.loss_mask[:, 1:] & (t.gate[:, 1:] > 0)).sum())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync()
        self.seconds += time.perf_counter() - self._t


def peak_memory_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux -> GB


def run_slice(args, family: dict, tok_dir: Path, work: Path, counter: Counter):
    tiny = args.scale == "tiny"
    (s_kind, s_name, s_shape), (t_kind, t_name, t_shape) = family["student"], family["teacher"]
    s_cfg, t_cfg = make_config(s_kind, s_shape, tiny), make_config(t_kind, t_shape, tiny)
    s_dir = model_folder(work, "student", s_cfg, tok_dir)
    t_dir = model_folder(work, "teacher", t_cfg, tok_dir)
    lora = None if tiny else LoraSpec(r=64, alpha=128, dropout=0.05)
    module = SageModule(
        student=ModelSpec(str(s_dir), init="random", lora=lora, gradient_checkpointing=not tiny),
        teacher=ModelSpec(str(t_dir), init="random", seed=1),
        loss=LossSpec(chunk_tokens=args.chunk_tokens),
        gate=GateSpec(max_batch=args.judge_batch),
    )
    dm = SageDataModule(
        train_games=args.games, max_turns=args.turns, env_workers=args.workers, samples_per_step=args.samples_per_step,
        max_tokens_per_micro_batch=args.micro_tokens,
        rollout=RolloutSpec(context_mode=args.mode, max_new_tokens=args.max_new_tokens, max_context_tokens=4096,
                            engine=args.engine),
    )
    pool = find_games("train") + find_games("valid_seen") + find_games("valid_unseen")
    games = (pool * (args.games // len(pool) + 1))[: args.games]  # real games, repeated past the bundled 72
    dm.source.games = lambda ctx, epoch: games  # this benchmark's games instead of a seeded sample
    dm.setup()
    dm.pool.reset(games[: args.workers * 2])  # start the environment workers before anything is timed
    timer = StepTimer()
    trainer = L.Trainer(
        max_epochs=1, accelerator=args.device, devices=1, precision=args.precision, logger=False,
        default_root_dir=str(work),  # the epoch's kept rollouts go to the temporary folder
        enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
        reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False, callbacks=[timer], enable_model_summary=False,
    )

    class Hooked(L.Callback):
        player = None
        epoch = None

        def on_fit_start(self, trainer, pl_module):  # after configure_model built the models
            Hooked.player = trainer.datamodule.player  # the DataModule lets it go at teardown
            base_model(pl_module.student).get_decoder().register_forward_pre_hook(counter.hook("student"), with_kwargs=True)
            base_model(pl_module.teacher).get_decoder().register_forward_pre_hook(counter.hook("teacher"), with_kwargs=True)

        def on_epoch_data(self, trainer, pl_module, epoch):  # sage.epoch.publish
            Hooked.epoch = epoch

    trainer.callbacks.append(Hooked())
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - t0
    return module, Hooked.epoch, Hooked.player.stats.as_dict(), timer, wall, s_cfg, t_cfg, s_name, t_name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--scale", choices=["tiny", "paper"], default="tiny")
    p.add_argument("--family", choices=sorted(ARCHS), default="qwen2.5")
    p.add_argument("--mode", choices=["window", "transcript"], default="window")
    p.add_argument("--games", type=int, default=32)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 256 (paper), 32 (tiny)")
    p.add_argument("--workers", type=int, default=2, help="environment worker processes")
    p.add_argument("--samples-per-step", type=int, default=64)
    p.add_argument("--micro-tokens", type=int, default=16384)
    p.add_argument("--chunk-tokens", type=int, default=512)
    p.add_argument("--judge-batch", type=int, default=16)
    p.add_argument("--precision", default=None, help="default: bf16-mixed on cuda, 32-true on cpu")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the offline SmolLM2 one)")
    p.add_argument("--estimate", choices=sorted(DEVICES), default=None,
                   help="also estimate one paper epoch at paper shapes on this device from the counted work")
    p.add_argument("--engine", default="hf",
                   help="rollout engine: hf, vllm, or all (one run per installed engine, each its own process)")
    args = p.parse_args()
    if args.engine == "all":  # each engine in a fresh process: one's memory and threads never touch the other's
        import subprocess
        import sys

        from sage.rollout.engines import vllm_installed

        for engine in ["hf", "vllm"] if vllm_installed() else ["hf"]:
            print(f"\n=== engine {engine} ===", flush=True)
            subprocess.run([sys.executable, *sys.argv, "--engine", engine], check=True)
        return
    if args.engine not in ("hf", "vllm"):
        p.error(f"--engine={args.engine!r}: allowed hf, vllm, all")
    args.max_new_tokens = args.max_new_tokens or (32 if args.scale == "tiny" else 256)
    args.precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    family = ARCHS[args.family]
    tok_dir = Path(args.tokenizer) if args.tokenizer else smollm2_path()
    counter = Counter()
    in_phase(TeacherJudge, "judge", "judge")
    in_phase(TeacherScorer, "score", "score")
    in_phase(HFGenerator, "generate", "rollout")
    if args.engine == "vllm":
        from sage.rollout.vllm_engine import VLLMGenerator

        in_phase(VLLMGenerator, "generate", "rollout")
    in_phase(SageModule, "training_step", "train")
    env_clock: dict[str, float] = {}
    timed(EnvPool, "step", env_clock)
    torch.set_float32_matmul_precision("high")  # bf16-valued fp32 head matmuls stay exact under TF32

    dtype = torch.bfloat16 if "bf16" in args.precision else torch.float32
    probe = matmul_probe(dtype, 8192 if args.device == "cuda" else 1024, args.device)
    work = Path(tempfile.mkdtemp(prefix="sage-paper-scale-"))
    try:
        module, epoch, gen, timer, wall, s_cfg, t_cfg, s_name, t_name = run_slice(args, family, tok_dir, work, counter)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    S, T = Shape(s_cfg), Shape(t_cfg)
    judge, score = counter.get("teacher:judge"), counter.get("teacher:score")
    train_s, train_t = counter.get("student:train"), counter.get("teacher:train")
    stats = epoch.stats
    turns = int(stats["turns"])
    judged_rows = turns  # one judge prompt per turn (first-token scoring: one head row each)
    scored = sum(len(t.response_ids) for ep in epoch.episodes for t in ep.turns if t.confidence is not None)
    trained = timer.trained_tokens
    mult = 1 + (1 if module.student_spec.gradient_checkpointing else 0) + (1 if module.student_spec.lora else 2)
    phases = {
        "rollout": (stats["rollout_seconds"], gen["generated_tokens"],
                    S.flops(gen["prefill_tokens"] + gen["decode_row_steps"], gen["prefill_attended"] + gen["decode_attended"],
                            gen["generated_tokens"])),
        "judge": (stats["judge_seconds"], judge["tokens"], T.flops(judge["tokens"], judge["attended"], judged_rows)),
        "teacher": (stats["score_seconds"], score["tokens"], T.flops(score["tokens"], score["attended"], scored)),
        "student fwd+bwd": (timer.seconds, train_s["tokens"],
                            mult * S.flops(train_s["tokens"], train_s["attended"], 0)
                            + 2 * 2 * S.hidden * S.vocab * trained * 2 + 2 * 2 * T.hidden * T.vocab * trained),
    }
    print(f"\n{args.family} {args.scale}: student {s_name} ({S.linear / 1e9:.2f}B linear params), teacher {t_name} "
          f"({T.linear / 1e9:.2f}B){' at tiny shapes' if args.scale == 'tiny' else ''}; {args.device}, {args.precision}, "
          f"{args.games} games x {args.turns} turns, {args.mode}, max_new_tokens {args.max_new_tokens}; "
          f"matmul probe {probe / 1e12:.2f} TFLOP/s")
    print(f"{'phase':<18}{'seconds':>9}{'share %':>9}{'tokens':>10}{'tokens/s':>11}{'TFLOP/s':>9}{'of probe':>10}")
    total = sum(v[0] for v in phases.values())
    for name, (sec, tokens, flops) in phases.items():
        print(f"{name:<18}{sec:>9.2f}{100 * sec / total:>9.1f}{tokens:>10.0f}{tokens / max(sec, 1e-9):>11.0f}"
              f"{flops / max(sec, 1e-9) / 1e12:>9.3f}{flops / max(sec, 1e-9) / probe:>10.2f}")
    print(f"{'epoch slice':<18}{total:>9.2f}   (fit wall {wall:.1f} s incl. model build and env start)")
    # Teacher decoder passes per trained response token: the judge reads each turn (its response included)
    # once, the scoring pass each kept token once, and the training step none.
    passes = judged_rows / max(turns, 1) + scored / max(trained, 1) + train_t["calls"] * 0
    teacher_train_tokens = train_t["tokens"]
    scale = PAPER_GAMES * PAPER_TURNS / (args.games * args.turns)
    estimate = total * scale / 60
    print(f"teacher decoder passes per trained response token: judge {judged_rows / max(turns, 1):.2f} + scoring "
          f"{scored / max(trained, 1):.2f} + training {teacher_train_tokens / max(trained, 1):.2f} "
          f"(teacher tokens forwarded in training steps: {teacher_train_tokens:.0f})")
    print(f"one paper epoch by linear extrapolation: {total:.1f} s x (128 x 50)/({args.games} x {args.turns}) "
          f"= {estimate:.1f} min on this device at these shapes")
    figures = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "scale": args.scale,
        "family": args.family, "mode": args.mode, "games": args.games, "turns": args.turns,
        "phase_seconds": {k: round(v[0], 3) for k, v in phases.items()},
        "tokens_per_s": {k: round(v[1] / max(v[0], 1e-9), 1) for k, v in phases.items()},
        "tflops": {k: round(v[2] / max(v[0], 1e-9) / 1e12, 4) for k, v in phases.items()},
        "matmul_probe_tflops": round(probe / 1e12, 3),
        "teacher_tokens_per_response_token": round(passes + teacher_train_tokens / max(trained, 1), 3),
        "peak_memory_gb": round(peak_memory_gb(args.device), 2),
        "epoch_minutes_estimate": round(estimate, 2),
        "engine": args.engine,
    }
    if args.estimate:
        probe_dir = Path(tempfile.mkdtemp(prefix="sage-depth-probe-"))
        try:
            step_overhead = host_step_seconds(family, tok_dir, probe_dir)
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)
        figures["estimate"] = paper_estimate(args, family, gen, judge, score, turns, env_clock.get("step", 0.0),
                                             step_overhead)
    print(json.dumps(figures))


def host_step_seconds(family: dict, tok_dir: Path, work: Path) -> float:
    """Measured host time of one decode step of the student's architecture at its real depth but a tiny
    width (so compute is negligible): the Python and dispatch cost eager PyTorch + transformers pay per
    step whatever the device. A GPU host's CPU is usually faster than this machine's."""
    from sage.models import load_model, load_tokenizer
    from sage.rollout.generation import SamplingParams

    kind, _, shape = family["student"]
    thin = {k: v for k, v in {**shape, **TINY}.items() if k != "head_dim"}
    cfg = make_config(kind, {**thin, "num_hidden_layers": shape["num_hidden_layers"], "vocab_size": 49152}, tiny=False)
    folder = model_folder(work, "depth_probe", cfg, tok_dir)
    model = load_model(ModelSpec(str(folder), init="random", dtype="float32"), trainable=False)
    tok = load_tokenizer(str(folder))
    gen = HFGenerator(model, tok)
    prompts = [[5 + i] * 32 for i in range(8)]
    short, long = SamplingParams(max_new_tokens=1, stop_strings=()), SamplingParams(max_new_tokens=65, stop_strings=())
    gen.generate(prompts, long)
    t = time.perf_counter()
    gen.generate(prompts, short)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    gen.generate(prompts, long)
    return (time.perf_counter() - t - t1) / 64


def paper_estimate(args, family, gen, judge, score, turns, env_seconds, step_overhead: float) -> dict:
    """One paper epoch (128 games x 50 turns, window mode) at paper shapes on a datasheet device, from the
    per-turn token counts measured in this slice. Compute-bound phases at an assumed 40% of peak FLOP/s,
    decode steps at max(bytes / (70% of bandwidth), a per-step host overhead), environment steps at the
    measured seconds per game-step over 8 workers. An estimate, not a measurement."""
    peak, bw = DEVICES[args.estimate]
    mfu, bw_eff = 0.4, 0.7
    S = Shape(make_config(*family["student"][::2], tiny=False))
    T = Shape(make_config(*family["teacher"][::2], tiny=False))
    n = PAPER_GAMES * PAPER_TURNS
    per = {  # per turn, from the slice
        "prompt": gen["prefill_tokens"] / max(turns, 1),
        "response": gen["generated_tokens"] / max(turns, 1),
        "judge": judge["tokens"] / max(turns, 1),
        "scored": score["tokens"] / max(turns, 1),
    }
    p, r = per["prompt"], per["response"]
    prefill = n * S.flops(p, p * (p + 1) / 2, 1) / (peak * mfu)
    steps = PAPER_TURNS * r  # every turn decodes ~r steps over the batch of games
    step_bytes = S.weight_bytes + PAPER_GAMES * (p + r / 2) * S.kv_bytes
    decode = steps * max(step_bytes / (bw * bw_eff), step_overhead)
    judge_s = n * T.flops(per["judge"], per["judge"] ** 2 / 2, 1) / (peak * mfu)
    score_s = n * T.flops(per["scored"], per["scored"] ** 2 / 2, r) / (peak * mfu)
    student = n * (3 * S.flops(p + r, (p + r) ** 2 / 2, 0) + 4 * 2 * S.hidden * S.vocab * r
                   + 2 * 2 * T.hidden * T.vocab * r) / (peak * mfu)
    # pool.step runs a game-step per game spread over the workers: seconds per game-step x workers in parallel
    per_game_step = env_seconds * args.workers / max(turns, 1)
    env = n * per_game_step / PAPER_WORKERS
    parts = {"rollout prefill": prefill, "rollout decode": decode, "judge": judge_s, "teacher": score_s,
             "student fwd+bwd": student, "environment": env}
    total = sum(parts.values()) / 60
    print(f"\nESTIMATE for one paper epoch on {args.estimate} (not measured): {PAPER_GAMES} games x {PAPER_TURNS} turns, "
          f"per turn {p:.0f} prompt / {r:.0f} response / {per['judge']:.0f} judge tokens (from this slice)")
    print(f"  assumptions: {mfu:.0%} of {peak / 1e12:.0f} TFLOP/s for forwards, decode step = max(bytes / "
          f"({bw_eff:.0%} of {bw / 1e12:.2f} TB/s), {step_overhead * 1e3:.0f} ms host overhead), "
          f"{S.weight_bytes / 1e9:.1f} GB student weights + KV {S.kv_bytes / 1e3:.0f} kB/token")
    for k, v in parts.items():
        print(f"  {k:<18}{v / 60:>8.2f} min")
    print(f"  {'total':<18}{total:>8.2f} min")
    return {"device": args.estimate, "minutes": round(total, 2), "parts_minutes": {k: round(v / 60, 3) for k, v in parts.items()},
            "assumptions": {"mfu": mfu, "bandwidth_share": bw_eff, "decode_step_overhead_s": step_overhead}}


if __name__ == "__main__":
    main()
