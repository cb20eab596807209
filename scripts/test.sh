#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv=${SAGE_VENV:-.venv}
"$venv/bin/ruff" check sage callbacks tests benchmarks
"$venv/bin/python" -m pytest -q "$@"
