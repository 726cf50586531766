#!/usr/bin/env bash
# Install everything robustprune needs on a fresh Debian machine (run from the repository root).
#   bash scripts/setup.sh           # the library, CLI and the real Fashion-MNIST files
#   bash scripts/setup.sh --test    # the same plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# Real Fashion-MNIST (IDX files) under /usr/share/datasets/fashion-mnist/: the embedded default dataset.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi

# Headless Chromium for the test that opens the HTML report (only with --test).
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  $SUDO apt-get install -y -q chromium >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
fi

PY=${PYTHON:-python3}
# torch first and pinned: 2.13.0 is the local CPU wheel (a bare `torch` requirement would pull a CUDA build).
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q torch==2.13.0
fi
extras=""
# --test: the test tools, the `export` extra (onnx, onnxruntime, onnxscript) and the `ray` extra, so that the export
# tests and the real-cluster tests (tests/test_study_cluster.py) run; `autoattack` (pyautoattack) and `svhn` (scipy)
# for the cross-checks against the official AutoAttack and the SVHN loader
TEST_EXTRAS="test,export,ray,autoattack,svhn"
if [ "${1:-}" = "--test" ]; then extras="[${TEST_EXTRAS}]"; fi
"$PY" -m pip install -q -e ".${extras}"
# foolbox (with numba) for the Foolbox cross-checks, where it installs (it has no wheel for every Python / platform):
# a failure is said, and only those tests skip
if [ "${1:-}" = "--test" ]; then
  "$PY" -m pip install -q -e ".[foolbox]" \
    || echo "note: foolbox / numba did not install here; the Foolbox cross-checks (tests/test_attacks_crosscheck.py) will skip" >&2
fi
