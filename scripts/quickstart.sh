#!/usr/bin/env bash
# Set up, then train SAGE-OPD on the CPU with the bundled games (configs/quickstart.yaml) and
# evaluate the trained student on valid_seen and valid_unseen.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv=${SAGE_VENV:-.venv}
"$venv/bin/sage" fit --config configs/quickstart.yaml "$@"
ckpt=$(ls -t runs/quickstart/version_*/checkpoints/*.ckpt | head -n 1)
echo "validating $ckpt"
"$venv/bin/sage" validate --config configs/quickstart.yaml --ckpt_path "$ckpt"
