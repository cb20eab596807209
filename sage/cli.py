"""`sage`: the LightningCLI entry point (`sage fit|validate --config configs/<x>.yaml`).

The ablation toggles, ALFWorld evaluation and transcript callbacks are always present and are set
from top-level YAML keys `ablation:`, `evaluation:` and `transcripts:`. `sage experiment` runs a
whole method x ablation x seed matrix (see `sage.experiment`).
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from callbacks import AblationToggles, AlfworldEvaluation, EpisodeTranscripts
from sage.data import SageDataModule
from sage.module import SageModule

TRAINER_DEFAULTS = {
    "reload_dataloaders_every_n_epochs": 1,  # fresh on-policy episodes every epoch
    "use_distributed_sampler": False,  # the DataModule shards games itself, without padding
    "num_sanity_val_steps": 0,
    "accelerator": "auto",
}


class SageCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(AblationToggles, "ablation")
        parser.add_lightning_class_args(AlfworldEvaluation, "evaluation")
        parser.add_lightning_class_args(EpisodeTranscripts, "transcripts")


def cli(args=None, run: bool = True) -> SageCLI:
    return SageCLI(
        SageModule,
        SageDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "experiment":
        from sage.experiment import main as experiment_main

        experiment_main(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "view":
        from sage.view import main as view_main

        view_main(sys.argv[2:])
        return
    cli()


if __name__ == "__main__":
    main()
