#!/usr/bin/env bash
# What a GPU gives biomedseg, in under 8 minutes on one GPU (steps: benchmarks/gpu_suite.py):
#   training img/s vs a MONAI loop on the same net (bf16 autocast, channels-last, compile),
#   whether the GPU waits on data (synthetic vs real batches), predict MPix/s vs MONAI
#   sliding_window_inference, ISBI 2012 Dice after a 2-minute training budget.
#
#   benchmarks/gpu_suite.sh [--dry-run] [--log FILE]
#
# --dry-run: every step on the CPU with tiny sizes, in seconds (run by tests/test_gpu_suite.py).
# Each step runs in its own process under a time limit; one RESULT line per step, "failed" when
# a step fails or overruns (the others still run). Exit code: the number of failed steps.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"
DRY=""
LOG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY="--dry-run" ;;
    --log) shift; LOG="$1" ;;
    *) echo "gpu_suite.sh: unknown option $1 (use --dry-run, --log FILE)" >&2; exit 2 ;;
  esac
  shift
done
# seconds per step on a GPU (sum 470 s < 8 min; train and data compile first, isbi plans, trains 120 s
# and evaluates); the dry run gets 120 s per step on a busy CPU
declare -A LIMIT=([train]=140 [data]=100 [predict]=60 [isbi]=170)
failed=0
{
  echo "gpu_suite $(date -u +%Y-%m-%dT%H:%M:%SZ) ${DRY:-gpu}"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  for step in train data predict isbi; do
    limit=${LIMIT[$step]}
    [ -n "$DRY" ] && limit=120
    start=$(date +%s)
    if ! timeout "$limit" "$PY" "$HERE/gpu_suite.py" "$step" $DRY; then
      echo "RESULT gpu_suite step=$step failed (exit or over ${limit}s)"
      failed=$((failed + 1))
    fi
    echo "step $step: $(( $(date +%s) - start )) s"
  done
  exit "$failed"
} 2>&1 | if [ -n "$LOG" ]; then tee "$LOG"; else cat; fi
exit "${PIPESTATUS[0]}"
