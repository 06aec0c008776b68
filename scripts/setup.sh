#!/usr/bin/env bash
# Set up labelrefinery on a Debian/Ubuntu machine with Python 3.11:
# the Fashion-MNIST Debian package, a virtual environment in .venv, the package and its test extras.
# Idempotent: a second run only checks. Needs root or sudo for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "setup: installing the Debian package dataset-fashion-mnist" >&2
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
pip_install() {  # quiet on success, the whole log on failure
  local log
  log=$(mktemp)
  if ! .venv/bin/python -m pip install -q "$@" >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" >&2
    rm -f "$log"
    echo "setup: 'pip install $*' failed (log above)" >&2
    exit 1
  fi
  rm -f "$log"
}
if ! .venv/bin/python -c "import labelrefinery, torch, torchvision, timm, pytest, matplotlib, selenium, tensorboard" 2>/dev/null; then
  echo "setup: installing torch, torchvision and labelrefinery into .venv (about a minute)" >&2
  pip_install torch torchvision
  pip_install -e '.[test,timm]'
fi
.venv/bin/python -c "import labelrefinery, torch; print(f'setup: labelrefinery {labelrefinery.__version__}, torch {torch.__version__}')" >&2
