"""Episodes on disk as JSON lines: files that the project reads back can never run code.

The project keeps episodes in files it loads later: each epoch's rollouts and a rollout stopped by SIGTERM
(``<run>/epoch_data/``, for exact resume) and the teacher pool that runs share (`sage.teacher_pool`).
``torch.load(weights_only=False)`` would unpickle them, and a pickle runs whatever code it names, so a
file from someone else would be a program. Here a file is one header line, ``{"format": "sage-episodes",
"version": 1, "kind": ..., ...}``, then one `Episode` per line with every field of it and of its turns.
JSON writes a float as its shortest repr, which reads back as the same float, so a resumed run trains on
bit-identical log-probs. The one tensor kept, the sampler's RNG state, is stored as the base64 of its bytes.

A file written by an older sage with ``torch.save`` is refused with one line that names the command
converting it once (it unpickles the file, so only for a file you trust, such as your own run's):

    python -m sage.records_io OLD.pt [NEW.jsonl]
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
from pathlib import Path

from sage.errors import InputError
from sage.io import write_atomic
from sage.rollout.records import Episode, Turn

FORMAT, VERSION = "sage-episodes", 1
KINDS = ("epoch", "partial_play", "teacher_pool", "teacher_pool_partial")
_TORCH_ZIP = b"PK\x03\x04"  # torch.save's zip container
_PICKLE = b"\x80"  # a bare pickle (protocol 2+)
_DTYPES = ("uint8", "int64", "float32", "float64")  # tensors a header may hold (RNG states are uint8)


class RecordsFileError(InputError, ValueError):
    """An episodes file that is not one (another format, a truncated line, another kind)."""


class LegacyFileError(RecordsFileError):
    """A pickle written by an older sage: not loaded (it could run code); the message says how to convert it."""


def convert_hint(path: str | Path) -> str:
    return (f"{str(path)!r} is a pickle written by an older sage (torch.save), which can run code when loaded, so "
            f"it is not read; if it is yours, convert it once: python -m sage.records_io {path} "
            f"(writes {default_target(Path(path)).name} beside it)")


def default_target(src: Path) -> Path:
    """Where `convert` writes: ``x.pt`` -> ``x.jsonl``, ``x.pt.partial`` -> ``x.jsonl.partial``."""
    if src.name.endswith(".pt.partial"):
        return src.with_name(src.name[: -len(".pt.partial")] + ".jsonl.partial")
    return src.with_suffix(".jsonl")


def converted(path: str | Path) -> Path:
    """``path``, or the converted file beside it when ``path`` names an old ``.pt`` that was converted (a
    checkpoint written before the change still points at its ``epoch_NNN.pt``)."""
    path = Path(path)
    if path.suffix == ".pt" and default_target(path).is_file():
        return default_target(path)
    return path


# -- values ------------------------------------------------------------------------------------------------
def episode_to_dict(ep: Episode) -> dict:
    return dataclasses.asdict(ep)


def episode_from_dict(d: dict) -> Episode:
    d = dict(d)
    turns = [Turn(**t) for t in d.pop("turns")]
    return Episode(**d, turns=turns)


def encode_state(state):
    """An RNG state (a uint8 tensor) or None or plain JSON, as JSON."""
    import torch

    if isinstance(state, torch.Tensor):
        t = state.detach().cpu().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise TypeError(f"cannot store a {t.dtype} tensor in an episodes file (allowed: {_DTYPES})")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        return {"tensor": {"dtype": dtype, "shape": list(t.shape), "base64": base64.b64encode(raw).decode()}}
    json.dumps(state)  # anything else must be plain JSON (raises TypeError otherwise)
    return {"json": state}


def decode_state(value):
    import torch

    if value is None:
        return None
    if "json" in value:
        return value["json"]
    t = value["tensor"]
    if t["dtype"] not in _DTYPES:
        raise ValueError(f"tensor dtype {t['dtype']!r} not allowed")
    raw = bytearray(base64.b64decode(t["base64"]))
    return torch.frombuffer(raw, dtype=torch.uint8).view(getattr(torch, t["dtype"])).reshape(t["shape"]).clone()


# -- files -------------------------------------------------------------------------------------------------
def write_episodes(path: str | Path, kind: str, episodes: list[Episode], **header) -> None:
    """One header line (``kind`` and ``header``'s JSON fields) then one line per episode, atomically."""
    if kind not in KINDS:
        raise ValueError(f"unknown episodes file kind {kind!r}; allowed: {KINDS}")
    head = {"format": FORMAT, "version": VERSION, "kind": kind, "episodes": len(episodes), **header}
    lines = [json.dumps(head)] + [json.dumps(episode_to_dict(ep)) for ep in episodes]
    write_atomic(path, "\n".join(lines) + "\n")


def read_episodes(path: str | Path, kind: str) -> tuple[dict, list[Episode]]:
    """(header, episodes) of a file `write_episodes` wrote; anything else is refused with one line."""
    path = Path(path)
    with open(path, "rb") as f:
        start = f.read(4)
    if start.startswith(_TORCH_ZIP) or start.startswith(_PICKLE):
        raise LegacyFileError(convert_hint(path))
    lines = path.read_text().splitlines()
    try:
        head = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        head = None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise RecordsFileError(f"{str(path)!r} is not an episodes file written by sage (no {FORMAT!r} header)")
    if head.get("version") != VERSION or head.get("kind") != kind:
        raise RecordsFileError(f"{str(path)!r} holds {head.get('kind')!r} records of version {head.get('version')}; "
                               f"expected {kind!r} version {VERSION}")
    body = [ln for ln in lines[1:] if ln.strip()]
    if len(body) != head.get("episodes"):
        raise RecordsFileError(f"{str(path)!r} is cut short: {len(body)} of its {head.get('episodes')} episodes")
    try:
        episodes = [episode_from_dict(json.loads(ln)) for ln in body]
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise RecordsFileError(f"{str(path)!r} has an episode that is not one: {exc}") from None
    return head, episodes


def write_partial(path: str | Path, kind: str, partial, **header) -> None:
    """A stopped play (`sage.rollout.player.PartialPlay`): its finished episodes, then the stopped stream's."""
    cur = partial.current
    write_episodes(path, kind, [*partial.finished, *cur.episodes], finished=len(partial.finished),
                   done=list(cur.done), turn=cur.turn, rng_state=encode_state(cur.rng_state),
                   overflow=dict(cur.overflow), **header)


def read_partial(path: str | Path, kind: str):
    """(header, PartialPlay) of a file `write_partial` wrote."""
    from sage.rollout.loop import PartialRollout
    from sage.rollout.player import PartialPlay

    head, episodes = read_episodes(path, kind)
    n = head["finished"]
    current = PartialRollout(episodes[n:], list(head["done"]), head["turn"], decode_state(head["rng_state"]),
                             dict(head["overflow"]))
    return head, PartialPlay(episodes[:n], current)


# -- converting an old pickle, once --------------------------------------------------------------------------
def convert(src: str | Path, dst: str | Path | None = None) -> tuple[Path, str]:
    """Write the JSON-lines form of an old ``torch.save`` episodes file; returns (the new file, its kind).
    Unpickles ``src``: only for a file you trust."""
    import torch

    from sage.rollout.player import PartialPlay

    src = Path(src)
    dst = Path(dst) if dst is not None else default_target(src)
    obj = torch.load(src, map_location="cpu", weights_only=False)
    if isinstance(obj, list) and all(isinstance(e, Episode) for e in obj):
        write_episodes(dst, "epoch", obj)
        return dst, "epoch"
    if isinstance(obj, PartialPlay):
        write_partial(dst, "partial_play", obj)
        return dst, "partial_play"
    if isinstance(obj, dict) and {"meta", "games", "episodes", "seconds"} <= set(obj):
        write_episodes(dst, "teacher_pool", obj["episodes"], meta=_plain(obj["meta"]), games=_plain(obj["games"]),
                       seconds=obj["seconds"])
        return dst, "teacher_pool"
    if isinstance(obj, dict) and {"meta", "partial", "seconds"} <= set(obj):
        write_partial(dst, "teacher_pool_partial", obj["partial"], meta=_plain(obj["meta"]), seconds=obj["seconds"])
        return dst, "teacher_pool_partial"
    raise RecordsFileError(f"{str(src)!r} holds a {type(obj).__name__}, not episodes written by sage")


def _plain(value):
    """Tuples as lists, as JSON reads them back (what `sage.teacher_pool` compares)."""
    return json.loads(json.dumps(value))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sage.records_io", description=convert.__doc__.split(";")[0])
    ap.add_argument("source", type=Path, help="an epoch_data/*.pt file or a teacher pool (.pt, .pt.partial)")
    ap.add_argument("target", type=Path, nargs="?", help="default: beside it, .pt -> .jsonl")
    args = ap.parse_args(argv)
    if not args.source.is_file():
        ap.error(f"{args.source}: no such file")
    dst, kind = convert(args.source, args.target)
    print(f"{args.source} -> {dst} ({kind}); the old file can be deleted")


if __name__ == "__main__":
    main()
