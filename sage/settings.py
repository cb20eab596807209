"""Every setting of `sage fit|validate` checked when the config is parsed, before any class is built.

Two halves. `SageArgumentParser` turns the parser's own refusals (a wrong type, an unknown choice or key;
jsonargparse reports them as a tree of every union member's complaint, ~100 lines) into one line naming
the key, the value and what is allowed. `check_config` checks what the types cannot say: the Trainer's
and the optimizer's numbers, and the paths (output folders writable, ``--ckpt_path`` a readable
checkpoint). The specs (`sage.specs`) and `SageDataModule.__init__` check their own fields; the sweep in
tests/test_settings.py gives every key the parser knows a wrong type and an out-of-range value.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import re

from lightning.pytorch.cli import LightningArgumentParser

from sage.errors import InputError
from sage.paths import check_checkpoint_file, check_file_name, check_writable_dir
from sage.specs import SpecError, check_range


class ConfigError(InputError, ValueError):
    """A setting the parser or `check_config` refuses."""


PROFILERS = ("simple", "advanced", "pytorch", "xla")  # Lightning's profiler names


# -- the parser's own refusals, as one line ------------------------------------------------------------
_OURS = re.compile(r"^\s*(?:- )?(?:Problem with given class_path '[^']*':\s*)?(\S+=.*(?: must be |; allowed: |"
                   r" leaves no room| need at least| trains every).*)$")
_NOISE = ("NoneType", "dot import path", "Expected a path", "Namespace(", "NestedArg(")


def _type_name(text: str) -> str:
    m = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", text.strip())
    if m:
        return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
            m.group(1), m.group(1))
    m = re.fullmatch(r"typing\.Literal\[(.*)\]", text.strip())
    if m:
        return "one of " + ", ".join(v.strip().strip("'\"") for v in m.group(1).split(","))
    return text.strip()


def _block(lines: list[str]) -> list[str]:
    """The lines about the innermost key: those indented under the last ``Parser key`` line."""
    heads = [i for i, ln in enumerate(lines) if "Parser key" in ln]
    if not heads:
        return lines
    i = heads[-1]
    indent = len(lines[i]) - len(lines[i].lstrip())
    block = [lines[i].split('":', 1)[-1]]
    for ln in lines[i + 1:]:
        if ln.strip() and len(ln) - len(ln.lstrip()) <= indent:
            break
        block.append(ln)
    return block


def _class_with_init_args(text: str) -> bool:
    """The complaint is about a class given by class_path + init_args (a logger), not a dataclass spec."""
    m = re.search(r"Problem with given class_path '([\w.]+)'", text)
    if not m:
        return False
    try:
        return not dataclasses.is_dataclass(class_from_path(m.group(1)))
    except (ImportError, AttributeError):
        return False


# Keys renamed since (old -> new): a config that still names the old key gets one line naming both.
RENAMED_KEYS = {
    "data.rollout_batch": "data.games_per_rollout",
    "data.val_batch": "data.val_games_per_rollout",
    "data.teacher_pool.batch": "data.teacher_pool.games_per_rollout",
}


def renamed_key(text: str) -> str | None:
    """The line for a parser message about a renamed key (a flag ``--old``, a config file's ``old`` key, or a
    field of a spec such as data.teacher_pool), else None."""
    named = re.findall(r"--([\w.]+)|accept option '([\w.]+)'", text)
    parents = re.findall(r'Parser key "([^"]+)"', text)
    fields = re.findall(r"Option '(\w+)' is not accepted", text)
    keys = [a or b for a, b in named] + [f"{p}.{f}" for p in parents[:1] for f in fields]
    old = next((k for k in keys if k in RENAMED_KEYS), None)
    if old is None:
        return None
    return f"{old} was renamed {RENAMED_KEYS[old]} (games played together, not a batch of tensors): write that instead"


def one_line(message: str, options: list[str] | None = None) -> str:
    """One line for a jsonargparse error message: ``key='value': expected ...`` (``options``: the option
    strings of the parser, to suggest the closest one for an unknown key)."""
    text = message.strip()
    if renamed := renamed_key(text):
        return renamed
    lines = text.splitlines()
    if text.startswith("unrecognized arguments:") or "not expected in" in text or "No action for key" in text:
        words = re.findall(r"--[\w.\-]+|(?<=key \")[\w.]+|(?<=Key \")[\w.]+", text)
        close = difflib.get_close_matches(words[0], options, n=1, cutoff=0.6) if words and options else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        return lines[0] + hint + "; `sage fit --help` lists every key"
    keys = re.findall(r'Parser key "([^"]+)"', text)
    key = ".".join(dict.fromkeys(keys)) if keys else "?"
    if len(keys) > 1 and ("class_path=" in text or "callable class" in text or _class_with_init_args(text)):
        key = ".".join([keys[0], "init_args", *keys[1:]])
    ours = [m.group(1) for line in lines if (m := _OURS.match(line))]
    if ours:  # a check of ours (sage.specs) ran inside the parser: its message already names the key
        found = ours[-1]
        if keys and not found.startswith(("model.", "data.", "trainer.")):
            found = f"{keys[0]}.{found}"
        return found
    block = _block(lines)
    value = None
    for line in block:
        for pattern in (r"Got value: (.*)", r"Given value: (.*)"):
            m = re.search(pattern, line)
            v = m.group(1).split(". Got value:")[0].strip() if m else None
            if v is not None and not v.startswith(("Namespace(", "NestedArg(")) and value is None:
                value = v
    if value is None and (m := re.search(r"NestedArg\(key='[^']*', val=(.*)\)", text)):
        value = m.group(1).strip("'\"")
    expected = [_type_name(m.group(1)) for line in block if not any(n in line for n in _NOISE)
                for m in [re.search(r"Expected an? (.*?)(?:\. Got value:.*)?$", line)] if m]
    if expected:
        nullable = any("NoneType" in line for line in block)
        return f"{key}={value!r}: expected {' or '.join(dict.fromkeys(expected))}{' or null' if nullable else ''}"
    detail = next((ln.strip(" -") for ln in block if ln.strip() and not any(n in ln for n in _NOISE)), "")
    return f"{key}={value!r}: {detail}" if value is not None else f"{key}: {detail or lines[0]}"


class SageArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose refusals raise `ConfigError` with one line (`sage.cli.main` prints it)
    instead of printing the usage and a tree of union-member complaints. Parsers that jsonargparse uses
    internally (``exit_on_error=False``) keep raising their own errors."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("SAGE_TRACEBACK"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        raise ConfigError(one_line(message, options)) from ex


# -- what the types cannot say ------------------------------------------------------------------------
def _get(cfg, dotted: str, default=None):
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def _fields(node) -> dict:
    """A parsed section (a jsonargparse Namespace, an object or a dict) as a plain dict of its fields."""
    return dict(node.as_dict() if hasattr(node, "as_dict") else vars(node) if not isinstance(node, dict) else node)


def _int_or_fraction(key: str, value, what: str) -> None:
    """Lightning's limit_*_batches style: an int >= 0 (batches) or a float in [0, 1] (a fraction)."""
    if value is None:
        return
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be an integer >= 0 or a fraction in [0, 1] ({what})")
    if isinstance(value, int):
        check_range(key, value, 0)
    elif not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{key}={value!r} must be an integer >= 0 or a fraction in [0, 1] ({what})")


def _yaml(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def _exactly(key: str, value, want, why: str) -> None:
    if value != want:
        raise ConfigError(f"{key}={_yaml(value)} must be {_yaml(want)}: {why}")


def check_trainer(t) -> None:
    """The Trainer's numbers (Lightning checks some only once training runs, some never)."""
    for key, low, nullable in (("num_nodes", 1, False), ("max_epochs", -1, True), ("min_epochs", 0, True),
                               ("max_steps", -1, False), ("min_steps", 0, True), ("check_val_every_n_epoch", 1, True),
                               ("num_sanity_val_steps", -1, True), ("log_every_n_steps", 1, True)):
        check_range(f"trainer.{key}", _get(t, key), low, or_null=nullable)
    devices = _get(t, "devices")
    if isinstance(devices, str) and re.fullmatch(r"-?\d+", devices.strip()):
        devices = int(devices)
    bad_text = isinstance(devices, str) and not re.fullmatch(r"auto|\d+(,\d+)*,?", devices.strip())
    if bad_text or (isinstance(devices, int) and not isinstance(devices, bool) and (devices == 0 or devices < -1)):
        raise ConfigError(f"trainer.devices={devices!r} must be -1 (all), >= 1, 'auto' or a list of device ids")
    profiler = _get(t, "profiler")
    if isinstance(profiler, str) and profiler not in PROFILERS:
        raise ConfigError(f"trainer.profiler={profiler!r}; allowed: {', '.join(PROFILERS)} or a Profiler class")
    fast = _get(t, "fast_dev_run")
    if isinstance(fast, int) and not isinstance(fast, bool):
        check_range("trainer.fast_dev_run", fast, 0)
    for split in ("train", "val", "test", "predict"):
        _int_or_fraction(f"trainer.limit_{split}_batches", _get(t, f"limit_{split}_batches"), "batches per epoch")
    _int_or_fraction("trainer.overfit_batches", _get(t, "overfit_batches"), "batches to overfit")
    interval = _get(t, "val_check_interval")
    if isinstance(interval, bool):
        raise ConfigError(f"trainer.val_check_interval={interval!r} must be an integer >= 1, a fraction in (0, 1] "
                          "or a duration")
    if isinstance(interval, int):
        check_range("trainer.val_check_interval", interval, 1)
    elif isinstance(interval, float):
        check_range("trainer.val_check_interval", interval, 0.0, 1.0, low_open=True)
    max_time = _get(t, "max_time")
    if isinstance(max_time, str) and not re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", max_time):
        raise ConfigError(f"trainer.max_time={max_time!r} must be DD:HH:MM:SS (e.g. 00:12:00:00) or null")
    manual = "sage steps the optimizer itself (manual optimization)"
    _exactly("trainer.accumulate_grad_batches", _get(t, "accumulate_grad_batches", 1), 1,
             f"{manual}; data.samples_per_step sets how many samples one step takes")
    if _get(t, "gradient_clip_val") not in (None, 0, 0.0):
        raise ConfigError(f"trainer.gradient_clip_val={_get(t, 'gradient_clip_val')!r} must be null: {manual}; "
                          "set model.grad_clip instead")
    _exactly("trainer.gradient_clip_algorithm", _get(t, "gradient_clip_algorithm"), None,
             f"{manual}; model.grad_clip clips the gradient norm")
    _exactly("trainer.reload_dataloaders_every_n_epochs", _get(t, "reload_dataloaders_every_n_epochs", 1), 1,
             "every epoch plays fresh on-policy games")
    _exactly("trainer.use_distributed_sampler", _get(t, "use_distributed_sampler", False), False,
             "the DataModule shards games over ranks itself")


_OPTIMIZER_RANGES = {"lr": (0.0, None, True), "weight_decay": (0.0, None, False), "eps": (0.0, None, False),
                     "momentum": (0.0, None, False), "dampening": (0.0, None, False), "alpha": (0.0, None, False),
                     "lr_decay": (0.0, None, False), "rho": (0.0, 1.0, False)}


def class_from_path(path: str):
    module, _, name = str(path).rpartition(".")
    return getattr(importlib.import_module(module or "builtins"), name)


def check_optimizer(opt, sched) -> None:
    """model.optimizer's numbers, then a trial build of the optimizer (and scheduler) on one dummy tensor:
    torch's own checks (e.g. betas) run now, not after the models load."""
    import torch

    if opt is None:
        return
    args = dict(_get(opt, "init_args") or {})
    for name, (low, high, low_open) in _OPTIMIZER_RANGES.items():
        if isinstance(args.get(name), (int, float)) and not isinstance(args.get(name), bool):
            check_range(f"model.optimizer.init_args.{name}", args[name], low, high, low_open=low_open)
    betas = args.get("betas")
    if isinstance(betas, (list, tuple)) and not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"model.optimizer.init_args.betas={list(betas)} must be two numbers in [0, 1)")
    param = torch.nn.Parameter(torch.zeros(1))
    path = _get(opt, "class_path")
    try:
        built = class_from_path(path)([param], **args)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"model.optimizer ({path}) refuses init_args {args}: {exc}") from None
    if sched is not None:
        spath, sargs = _get(sched, "class_path"), dict(_get(sched, "init_args") or {})
        try:
            class_from_path(spath)(built, **sargs)
        except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as exc:
            raise ConfigError(f"model.lr_scheduler ({spath}) refuses init_args {sargs}: {exc}") from None


def check_model_specs(model) -> None:
    """model.student / model.teacher through their own checks (`ModelSpec`, `LoraSpec`), now, so the
    message can name the role: jsonargparse builds them later without saying which one it builds."""
    from sage.specs import LoraSpec, ModelSpec

    for role in ("student", "teacher"):
        spec = _get(model, role)
        if spec is None:
            continue
        fields = _fields(spec)
        try:
            if isinstance(fields.get("lora"), dict):
                fields["lora"] = LoraSpec(**fields["lora"])
            ModelSpec(**fields)
        except SpecError as exc:
            raise ConfigError(f"model.{role}.{exc}") from None


def check_splits(data) -> None:
    """data.train_split / data.val_splits are ALFWorld split names (the message names the key)."""
    from sage.envs import canonical_split

    for key, names in (("data.train_split", [_get(data, "train_split")]), ("data.val_splits", _get(data, "val_splits"))):
        for name in names or []:
            if name is None:
                continue
            try:
                canonical_split(name)
            except (InputError, ValueError) as exc:
                raise ConfigError(f"{key}: {exc}") from None


def check_data_source(cfg) -> None:
    """data.teacher_pool through its own checks (`TeacherPoolSpec`) now, then what crosses keys:
    data.source=teacher needs a teacher; the pool serves source=teacher only, from a file this run can
    write (it builds the pool when the file does not exist yet)."""
    from sage.specs import TeacherPoolSpec, check_teacher_pool_source

    source, pool = _get(cfg, "data.source"), _get(cfg, "data.teacher_pool")
    if pool is not None:
        fields = _fields(pool)
        TeacherPoolSpec(**fields)
    if source == "teacher" and _get(cfg, "model.teacher") is None:
        raise ConfigError("data.source=teacher needs model.teacher (the model whose episodes are trained on)")
    if pool is None:
        return
    check_teacher_pool_source(source, pool)
    file = str(fields["file"])
    try:
        check_writable_dir("its folder", os.path.dirname(os.path.abspath(os.path.expanduser(file))))
    except InputError as exc:
        raise ConfigError(f"data.teacher_pool.file={file!r} cannot be written: {exc}") from None


def check_config(cfg, subcommand: str | None) -> None:
    """Everything above, on the parsed config of one subcommand (`SageCLI.before_instantiate_classes`)."""
    check_model_specs(_get(cfg, "model"))
    trainer = _get(cfg, "trainer") or {}
    check_trainer(trainer)
    root = _get(cfg, "trainer.default_root_dir")
    check_writable_dir("trainer.default_root_dir", root)
    check_writable_dir("trainer.logger.init_args.save_dir", _get(cfg, "trainer.logger.init_args.save_dir"))
    flush = _get(cfg, "trainer.logger.init_args.flush_logs_every_n_steps")
    if flush is not None:
        check_range("trainer.logger.init_args.flush_logs_every_n_steps", flush, 1)
    version = _get(cfg, "trainer.logger.init_args.version")
    if isinstance(version, int) and not isinstance(version, bool):
        check_range("trainer.logger.init_args.version", version, 0, or_null=True)
    seed = _get(cfg, "seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool):
        check_range("seed_everything", seed, 0, 2**32 - 1)
    check_range("model.grad_clip", _get(cfg, "model.grad_clip"), 0.0, low_open=True, or_null=True)
    check_splits(_get(cfg, "data"))
    check_data_source(cfg)
    check_optimizer(_get(cfg, "model.optimizer"), _get(cfg, "model.lr_scheduler"))
    for key in ("evaluation.results_file", "evaluation.history_file", "evaluation.games_file",
                "evaluation.games_history_file", "episode_log.dirname"):
        check_file_name(key, _get(cfg, key))
    check_writable_dir("export.dirpath", _get(cfg, "export.dirpath"))
    check_checkpoint_file("ckpt_path", _get(cfg, "ckpt_path"))


def refused(exc: BaseException) -> bool:
    """Whether an exception raised while building the classes is the config's fault (printed as one line)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return isinstance(exc, (ValueError, OSError, SpecError, MisconfigurationException))
