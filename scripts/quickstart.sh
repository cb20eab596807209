#!/usr/bin/env bash
# Set up, warm the student up (configs/quickstart_warmup.yaml), then train SAGE-OPD on the CPU with the
# bundled games (configs/quickstart.yaml) and evaluate the trained student on valid_seen and valid_unseen.
set -euo pipefail
cd "$(dirname "$0")/.."
# the quickstart plays with the default hf engine: vLLM (minutes of download) is left out unless SAGE_VLLM is set
SAGE_VLLM=${SAGE_VLLM:-0} bash scripts/setup.sh
venv=${SAGE_VENV:-.venv}
# 1. warm the 6-layer student up on the bundled walkthroughs (once), so that it answers in the format
[ -f runs/quickstart_warmup/model/config.json ] || "$venv/bin/sage" fit --config configs/quickstart_warmup.yaml
# 2. distil from the shipped teacher, starting from that student
student=(--model.student.name_or_path runs/quickstart_warmup/model --model.student.num_layers null)
"$venv/bin/sage" fit --config configs/quickstart.yaml "${student[@]}" "$@"
ckpt=$(ls -t runs/quickstart/version_*/checkpoints/*.ckpt | head -n 1)
echo "validating $ckpt"
"$venv/bin/sage" validate --config configs/quickstart.yaml "${student[@]}" --ckpt_path "$ckpt"
