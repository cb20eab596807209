"""ALFWorld success on the evaluation splits, overall and per task type, as torchmetrics.

Logged as `val/<split>/success` and `val/<split>/<task_type>/success` (split = seen | unseen); the
metrics sync across ranks, so sharded evaluation still counts every game once. Each validation
during `sage fit` appends to `<log_dir>/val_history.jsonl`; `sage validate` prints a table and
writes `<log_dir>/eval_results.json`. Every game's record (split, game id, task type, won, turns played,
admissible and parsed turns) goes to `<log_dir>/eval_games.jsonl` (`sage validate`) or is appended to
`<log_dir>/val_games.jsonl` (`sage fit`, with the epoch), one file per rank under DDP, with 0/1 per turn
for admissible and parsed: paired comparisons of two models on the same panel, and every figure at a
shorter turn limit N (won with turns <= N, the first N turns' rates) from one longer greedy run, whose
first N turns are the same.

Beside success (0/1 per game, all-zero for weak agents), two turn-level rates say how far an agent is
from playing at all: `val/<split>/admissible_rate` (the action was one of the environment's admissible
commands at that observation) and `val/<split>/format_rate` (an `<action>` could be parsed). Two more
say how it plays: `val/<split>/repeat_rate` (the action repeats the game's previous one: stuck in a loop)
and, with a teacher, `val/<split>/reverse_kl` (KL(student || teacher) per response token, a token mean
over the split; records keep per turn its sum `kl` and its token count `kl_tokens`).

A game lost to the environment (its worker killed, a step that raised: `Episode.error`) is no measurement:
it is left out of every figure and counted, per split, as ``episodes: {asked, played, lost}`` in the
results, which say ``complete: false``; the table says it too and prints no figure over zero played turns.
Past ``data.max_lost_eval_share`` (default 0: any lost game) the run then stops with exit code 3
(`sage.envs.lost`), after writing the results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics import MeanMetric, SumMetric

from sage.envs import TASK_TYPES
from sage.envs.lost import check_share
from sage.io import write_atomic
from sage.rollout.records import admissible_flags, repeat_flags

RATE_ROWS = {"admissible_rate": "admissible actions (turns)", "format_rate": "parsed answers (turns)",
             "repeat_rate": "repeated actions (turns)", "reverse_kl": "reverse KL, nats/token (tokens)"}
# turn-level figures of eval_results.json "turn_rates", read back by the study tools (sage.study.results):
# reverse_kl is a token mean (nats, null without a teacher), the others fractions of turns.
TURN_RATES = tuple(RATE_ROWS)
COUNT_OF = {"reverse_kl": "kl_tokens"}  # a turn rate's count in "turn_rates" when it is not "turns"
LOST_KEYS = ("asked", "lost")  # per split: games asked for, games lost to the environment


def format_table(results: dict[str, dict[str, float]], counts: dict[str, dict[str, int]],
                 turn_rates: dict[str, dict[str, float]] | None = None,
                 episodes: dict[str, dict[str, int]] | None = None) -> str:
    """One table: success % per task type and overall (games), then the turn-level rates (turns; the
    reverse KL in nats per token, over tokens), with the splits side by side and the count beside each value.
    A split with no played turn prints "-" everywhere; ``episodes`` (asked, played, lost per split) adds a row
    of the games lost to the environment when there are any."""
    splits = list(results)
    if turn_rates:  # no success rate over zero played turns
        counts = {s: (c if turn_rates.get(s, {}).get("turns", 0) else dict.fromkeys(c, 0)) for s, c in counts.items()}
    head = f"{'ALFWorld success (greedy)':<34}" + "".join(f"{s + ' %':>12}{'n':>6}" for s in splits)
    rule = "-" * len(head)
    rows = [(key, key, {s: (results[s].get(key, float("nan")), counts[s].get(key, 0)) for s in splits})
            for key in [*TASK_TYPES, "overall"]]
    if turn_rates:
        rows += [(key, label, {s: (_or_nan(turn_rates.get(s, {}).get(key)),
                                   turn_rates.get(s, {}).get(COUNT_OF.get(key, "turns"), 0)) for s in splits})
                 for key, label in RATE_ROWS.items()]
    lines = [head, rule]
    for i, (key, label, cells) in enumerate(rows):
        if i in (len(TASK_TYPES), len(TASK_TYPES) + 1):
            lines.append(rule)
        lines.append(f"{label:<34}" + "".join(
            f"{'-' if n == 0 or math.isnan(v) else _shown(key, v):>12}{n:>6}" for v, n in cells.values()))
    if episodes and any(e.get("lost") for e in episodes.values()):
        lines += [rule, f"{'LOST to the environment (games)':<34}" + "".join(
            f"{episodes.get(s, {}).get('lost', 0):>12}{episodes.get(s, {}).get('asked', 0):>6}" for s in splits),
            "figures above are over the played games only: INCOMPLETE"]
    return "\n".join(lines)


def game_record(split: str, ep) -> dict:
    """One game's record, per turn where a rate needs it, so that `sage.study.eval_games.summarize` recomputes
    every figure at any shorter turn limit. ``kl``/``kl_tokens`` are null when no teacher scored the game;
    ``actions`` are the commands the student sent ("" for an unparsed answer), to read what it did."""
    scored = bool(ep.turns) and all(t.eval_kl is not None for t in ep.turns)
    return {
        "split": split, "game_id": ep.game_id, "task_type": ep.task_type, "won": bool(ep.success),
        "turns": len(ep.turns), "admissible": admissible_flags(ep),
        "parsed": [int(bool(t.valid_format)) for t in ep.turns],
        "repeat": repeat_flags(ep),
        "actions": [t.action for t in ep.turns],
        "kl": [float(t.eval_kl) for t in ep.turns] if scored else None,
        "kl_tokens": [int(t.eval_kl_tokens) for t in ep.turns] if scored else None,
        "error": ep.error,
    }


def _shown(key: str, value: float) -> str:
    """Rates print in %, the reverse KL in nats per token (it is no fraction)."""
    return f"{value:.3f}" if key == "reverse_kl" else f"{100 * value:.1f}"


def _or_nan(rate: float | None) -> float:
    """A missing rate prints as "-"; a rate of 0.0 is a measurement and prints as 0.0."""
    return float("nan") if rate is None else rate


class AlfworldEvaluation(L.Callback):
    def __init__(
        self, print_table: bool = True, results_file: str = "eval_results.json", history_file: str = "val_history.jsonl",
        games_file: str = "eval_games.jsonl", games_history_file: str = "val_games.jsonl",
    ) -> None:
        self.print_table = print_table
        self.results_file = results_file  # written by `sage validate` (one JSON object)
        self.history_file = history_file  # appended by every validation during `sage fit` (JSON lines)
        self.results: dict[str, dict[str, float]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self._metrics: dict[tuple[str, str], tuple[MeanMetric, SumMetric]] = {}
        self.turn_rates: dict[str, dict[str, float]] = {}
        self.episodes: dict[str, dict[str, int]] = {}
        self.games_file = games_file  # per-game records of `sage validate`
        self.games_history_file = games_history_file  # appended per-game records of `sage fit`
        self._games: list[dict] = []

    def _metric(self, split: str, key: str, device):
        if (split, key) not in self._metrics:
            self._metrics[(split, key)] = (MeanMetric().to(device), SumMetric().to(device))
        return self._metrics[(split, key)]

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        self._metrics, self._games = {}, []
        for i in range(len(dm.val_splits)):  # every rank creates every metric, so syncs line up
            for key in [*TASK_TYPES, "overall", *TURN_RATES, *LOST_KEYS]:
                mean, count = self._metric(dm.split_key(i), key, pl_module.device)
                # a zero-weight update: a task type no game of this rank has still computes (count 0, no
                # torchmetrics "compute before update" warning), the same on every rank
                mean.update(0.0, weight=0.0)
                count.update(0.0)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        split = trainer.datamodule.split_key(dataloader_idx)
        for ep in outputs["episodes"]:
            game = game_record(split, ep)  # the metrics below count from it
            self._games.append(game)
            self._metric(split, "asked", pl_module.device)[1].update(1.0)
            if ep.error is not None:  # lost to the environment: counted, no measurement
                self._metric(split, "lost", pl_module.device)[1].update(1.0)
                continue
            for key in ("overall", ep.task_type):
                mean, count = self._metric(split, key, pl_module.device)
                mean.update(float(game["won"]))
                count.update(1.0)
            for key, flags in (("admissible_rate", game["admissible"]), ("format_rate", game["parsed"]),
                               ("repeat_rate", game["repeat"])):
                mean, count = self._metric(split, key, pl_module.device)
                for ok in flags:
                    mean.update(float(ok))
                    count.update(1.0)
            if game["kl"] is not None:  # a token mean: each turn weighs its token count
                mean, count = self._metric(split, "reverse_kl", pl_module.device)
                for kl, n in zip(game["kl"], game["kl_tokens"], strict=True):
                    if n:
                        mean.update(kl / n, weight=float(n))
                        count.update(float(n))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.results, self.counts, self.turn_rates, self.episodes = {}, {}, {}, {}
        for (split, key), (mean, count) in sorted(self._metrics.items()):
            n = int(count.compute().item())
            if key in LOST_KEYS:
                self.episodes.setdefault(split, {})[key] = n
                continue
            value = float(mean.compute().item()) if n else float("nan")
            if key in TURN_RATES:
                rates = self.turn_rates.setdefault(split, {})
                rates[COUNT_OF.get(key, "turns")] = n
                rates[key] = None if math.isnan(value) else value
                if n:
                    pl_module.log(f"val/{split}/{key}", value, batch_size=n, add_dataloader_idx=False)
                continue
            self.results.setdefault(split, {})[key] = value
            self.counts.setdefault(split, {})[key] = n
            if n:
                name = f"val/{split}/success" if key == "overall" else f"val/{split}/{key}/success"
                pl_module.log(name, value, batch_size=n, add_dataloader_idx=False)
        # trainer.log_dir is a collective under DDP: every rank must ask, before the rank-0 write.
        root = Path(trainer.log_dir or trainer.default_root_dir)
        for e in self.episodes.values():
            e["played"] = e["asked"] - e["lost"]
        self._write(trainer, root)
        self._write_games(trainer, root)
        limit = getattr(trainer.datamodule, "max_lost_eval_share", 0.0)
        written = (root / (self.history_file if trainer.state.fn == "fit" else self.results_file)).name
        for split, e in sorted(self.episodes.items()):
            check_share(f"the evaluation of split {split}", e["lost"], e["asked"], limit, "data.max_lost_eval_share",
                        f"the results over the {e['played']} played games are in {root / written}, marked incomplete")

    def _write_games(self, trainer, root: Path) -> None:
        """This rank's per-game records (every rank writes its own file: no gather of Python objects)."""
        suffix = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        stamp = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        lines = "".join(json.dumps({**stamp, **g}) + "\n" for g in self._games)
        fit = trainer.state.fn == "fit"
        name = Path(self.games_history_file if fit else self.games_file)
        path = root / f"{name.stem}{suffix}{name.suffix}"
        if fit:
            root.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(lines)
        else:
            write_atomic(path, lines)

    @rank_zero_only
    def _write(self, trainer, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        success = {s: {k: (None if math.isnan(v) else v) for k, v in r.items()} for s, r in self.results.items()}
        payload = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "success": success,  # fraction of games won; null where the split has no game of that type
            "games": self.counts,
            "turn_rates": self.turn_rates,  # per split: the TURN_RATES, turns (and KL tokens) counted
            "episodes": self.episodes,  # per split: games asked, played, lost to the environment
            "complete": not any(e["lost"] for e in self.episodes.values()),
        }
        if trainer.state.fn == "fit":
            with open(root / self.history_file, "a") as f:
                f.write(json.dumps(payload) + "\n")
        else:
            write_atomic(root / self.results_file, json.dumps(payload, indent=1) + "\n")
        if self.print_table and trainer.state.fn == "validate":
            print("\n" + format_table(self.results, self.counts, self.turn_rates, self.episodes) + "\n", flush=True)
