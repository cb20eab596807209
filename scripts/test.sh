#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv=${SAGE_VENV:-.venv}
"$venv/bin/ruff" check sage callbacks tests benchmarks
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null
then
    echo "test.sh: no Chromium on PATH, so tests/test_view.py::test_real_browser_renders_every_turn is skipped" \
         "(apt-get install chromium runs it; CI installs it)"
fi
"$venv/bin/python" -m pytest -q "$@"
