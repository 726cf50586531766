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
# tests and the real-cluster tests (tests/test_study_cluster.py) run
if [ "${1:-}" = "--test" ]; then extras="[test,export,ray]"; fi
"$PY" -m pip install -q -e ".${extras}"
