"""Put a trained teacher adapter into the package (sage/assets/<name>), from a training checkpoint or
from the adapter folder that `ExportStudent(adapter_only=true)` wrote:

    python -m sage.teacher.ship runs/teacher/adapter
    python -m sage.teacher.ship runs/teacher/version_0/checkpoints/last.ckpt

Only the adapter (adapter_config.json + adapter_model.safetensors) is kept; its base-model field names
the offline alias instead of this machine's cache path, and a SOURCE.json records where it came from. A
judge calibration of the previous adapter (`sage.teacher.calibrate`) is removed: it belongs to that one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from sage.io import atomic_folder
from sage.shipped import SHIPPED

FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_from_checkpoint(ckpt: Path, out: Path) -> None:
    """Rebuild the LoRA student of a training checkpoint and save its adapter."""
    from sage.checkpointing import load_checkpoint_file
    from sage.models import load_model
    from sage.specs import LoraSpec, ModelSpec

    state = load_checkpoint_file(ckpt, map_location="cpu")  # weights_only=True: a checkpoint runs no code
    spec = state["hyper_parameters"]["student"]
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec(**{**spec, "lora": LoraSpec(**spec["lora"]) if spec.get("lora") else None})
    if spec.lora is None:
        raise SystemExit(f"{ckpt}: its student has no LoRA adapter (model.student.lora is null)")
    model = load_model(spec, trainable=True)
    weights = {k.removeprefix("student."): v for k, v in state["state_dict"].items()}
    missing = [k for k, p in model.named_parameters() if p.requires_grad and k not in weights]
    if missing:
        raise SystemExit(f"{ckpt}: {len(missing)} adapter weights missing (first: {missing[0]})")
    model.load_state_dict(weights, strict=False)
    model.save_pretrained(out)


def ship(source: Path, name: str) -> Path:
    """Write the adapter folder beside the package's copy, then swap it in whole (`sage.io.atomic_folder`)."""
    base, target = SHIPPED[name]
    with atomic_folder(target) as folder:
        if source.is_dir():
            for f in FILES:
                shutil.copy(source / f, folder / f)
        else:
            adapter_from_checkpoint(source, folder)
        config = json.loads((folder / FILES[0]).read_text())
        config["base_model_name_or_path"] = base
        if isinstance(config.get("target_modules"), list):  # peft writes a set's order: sorted, diffs stay stable
            config["target_modules"] = sorted(config["target_modules"])
        (folder / FILES[0]).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        digest = hashlib.sha256((folder / FILES[1]).read_bytes()).hexdigest()
        (folder / "SOURCE.json").write_text(json.dumps(
            {"base": base, "from": source.name, "adapter_sha256": digest}, indent=2) + "\n")
        for extra in set(p.name for p in folder.iterdir()) - {*FILES, "SOURCE.json"}:
            (folder / extra).unlink()  # save_pretrained's README.md: the package keeps the adapter only
    return target


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="adapter folder or training checkpoint (.ckpt)")
    ap.add_argument("--name", default="smollm2-135m-alfworld", choices=sorted(SHIPPED))
    args = ap.parse_args(argv)
    if not args.source.exists():
        ap.error(f"{args.source} does not exist")
    print(f"shipped {args.source} -> {ship(args.source, args.name)}")


if __name__ == "__main__":
    main()
