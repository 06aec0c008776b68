#!/usr/bin/env bash
# Run the test suite (CPU). Sets the environment up first if this checkout has none.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
