#!/usr/bin/env bash
# Run the test suite (CPU). Sets the environment up first if this checkout has none, and installs Debian's
# chromium and chromium-driver when missing: the test of `refinery inspect`'s page renders it in a real browser
# (refinery itself never needs one). Where they cannot be installed, that one test is skipped and says why.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "test: installing Debian's chromium and chromium-driver for the browser test of the HTML report" >&2
  if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
         chromium-driver >/dev/null; }; then
    echo "test: could not install chromium; the browser test will be skipped" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
