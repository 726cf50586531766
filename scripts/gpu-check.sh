#!/usr/bin/env bash
# The GPU check: on a CUDA machine with PyTorch installed, run from the repository root
#   bash scripts/gpu-check.sh            # tests with CUDA present, the main job on the GPU (default and bf16), the bench
#   bash scripts/gpu-check.sh --quick    # tests and the bench only (no main jobs)
# with PyTorch's default settings (TF32 on for cuDNN convolutions). About 6-8 minutes on one H200. It installs the
# package with the test extras of `scripts/setup.sh --test` unless they are importable already, needs the Fashion-MNIST IDX files
# (apt-get install -y dataset-fashion-mnist) and writes
# everything under runs/gpu-check/. It ends with a summary: tests passed / failed, main-job wall times and APGD
# accuracy per precision, PGD-10 training images/s per precision (ResNet-18, batch 512) and the library / bare ratio.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${GPU_CHECK_OUT:-runs/gpu-check}
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
# optional time limits per stage in seconds (0: none), for machines lent by the minute
T_TESTS=${GPU_CHECK_TESTS_TIMEOUT:-0}; T_MAIN=${GPU_CHECK_MAIN_TIMEOUT:-0}; T_BENCH=${GPU_CHECK_BENCH_TIMEOUT:-0}
MAIN_PRECISIONS=${GPU_CHECK_MAIN_PRECISIONS:-auto bf16}   # the main job's training precisions
mkdir -p "$OUT"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device visible to PyTorch ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1)); run this on a CUDA machine" >&2
  exit 2
fi
# the same set as `scripts/setup.sh --test` (its TEST_EXTRAS, and foolbox where it installs), so the export, SVHN and
# cross-check tests run here too instead of skipping
EXTRAS=$(sed -n 's/^TEST_EXTRAS="\(.*\)"$/\1/p' scripts/setup.sh)
if ! "$PY" -c "import robustprune, pytest, onnxruntime, pyautoattack, scipy" >/dev/null 2>&1; then
  "$PY" -m pip install -q -e ".[${EXTRAS}]" || { echo "error: could not install robustprune (pip install -e .[${EXTRAS}])" >&2; exit 2; }
fi
"$PY" -c "import foolbox, numba" >/dev/null 2>&1 || "$PY" -m pip install -q -e ".[foolbox]" \
  || echo "note: foolbox / numba did not install here; the Foolbox cross-checks will skip" >&2
"$PY" - <<'EOF' | tee "$OUT/device.txt"
import torch
from robustprune.precision import tf32_enabled
p = torch.cuda.get_device_properties(0)
print(f"device: {p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"TF32 defaults {tf32_enabled()}")
EOF

# 1. the test suite with CUDA present (xdist when installed)
XDIST=""
if "$PY" -c "import xdist" >/dev/null 2>&1; then XDIST="-n $(( $(nproc) < 12 ? $(nproc) : 12 ))"; fi
t0=$(date +%s)
timeout "$T_TESTS" "$PY" -m pytest -q $XDIST -p no:cacheprovider > "$OUT/tests.txt" 2>&1
TEST_RC=$?
TEST_WALL=$(( $(date +%s) - t0 ))
TEST_LINE=$(grep -E "(passed|failed|error)" "$OUT/tests.txt" | tail -1)
echo "tests: rc=$TEST_RC in ${TEST_WALL}s: $TEST_LINE"

# 2. the main job on the GPU at the default precision (auto: tf32 on CUDA) and in bf16 (both evaluated in strict fp32)
declare -A MAIN_WALL MAIN_RC
if [ "$QUICK" = 0 ]; then
  for prec in $MAIN_PRECISIONS; do
    t0=$(date +%s)
    timeout "$T_MAIN" "$PY" -m robustprune study --precision "$prec" --out "$OUT/main-$prec" --quiet > "$OUT/main-$prec.log" 2>&1
    MAIN_RC[$prec]=$?
    MAIN_WALL[$prec]=$(( $(date +%s) - t0 ))
    echo "main job ($prec): rc=${MAIN_RC[$prec]} in ${MAIN_WALL[$prec]}s"
  done
fi

# 3. the bench: ResNet-18, CIFAR-shaped batch of 512, PGD-10, library vs bare loop at each precision
timeout "$T_BENCH" "$PY" bench/bench_pgd_step.py --model resnet18 --batch 512 --steps 10 --iters 6 --rounds 3 --warmup 1 \
  --precision fp32,tf32,bf16 --device cuda --no-naive > "$OUT/bench.txt" 2>&1
BENCH_RC=$?

echo
echo "================ GPU check summary ================"
cat "$OUT/device.txt"
echo "tests:        $TEST_LINE (rc $TEST_RC, ${TEST_WALL}s)"
if [ "$QUICK" = 0 ]; then
  for prec in $MAIN_PRECISIONS; do
    "$PY" - "$OUT/main-$prec/results.sqlite" "$prec" "${MAIN_WALL[$prec]}" "${MAIN_RC[$prec]}" <<'EOF'
import sqlite3, statistics, sys
db, prec, wall, rc = sys.argv[1:]
try:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    models = con.execute("SELECT COUNT(*) FROM models").fetchone()[0]
    rows = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    apgd = [r[0] for r in con.execute("SELECT robust_acc FROM results WHERE attack = 'apgd'")]
    failed = con.execute("SELECT COUNT(*) FROM failures").fetchone()[0] if con.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'failures'").fetchone() else 0
    mean = f"{100 * statistics.mean(apgd):.1f} %" if apgd else "n/a"
    trained = ",".join(sorted({r[0] or "?" for r in con.execute("SELECT train_precision FROM models")}))
    print(f"main job --precision {prec} (trained in {trained}, evaluated in fp32): rc {rc}, {wall}s wall, "
          f"{models} models, {rows} rows, {failed} failed, mean APGD accuracy over models {mean}")
except Exception as exc:  # the summary must print whatever happened
    print(f"main job {prec}: rc {rc}, {wall}s wall; no database readable ({exc})")
EOF
  done
fi
echo "bench (rc $BENCH_RC):"
grep -E "ratio|img/s|speed-up" "$OUT/bench.txt" | sed 's/^/  /'
echo "files: $OUT/"
FAIL=$(( TEST_RC != 0 || BENCH_RC != 0 ))
if [ "$QUICK" = 0 ]; then for prec in $MAIN_PRECISIONS; do FAIL=$(( FAIL || ${MAIN_RC[$prec]} != 0 )); done; fi
exit $FAIL
