#!/usr/bin/env bash
# GPU throughput of patchup_tf against the PyTorch original, in under 8 minutes.
#
# Run from the repository root on a machine with one NVIDIA GPU, after
# `pip install -e ".[train]"` (TensorFlow with CUDA: `pip install "tensorflow[and-cuda]"`
# if the plain wheel does not see the GPU; torch too, for the original):
#
#     OUT=/tmp/gpu_bench bash benchmarks/gpu.sh
#
# Writes $OUT/gpu_results.json, $OUT/gpu_results.md (the report) and
# $OUT/gpu_log.txt (the log). Measures img/s of the training step (batch 100) for
# PreActResNet18 and WRN-28-10 x {vanilla, soft PatchUp, hard PatchUp, mixup} x
# {float32, mixed_bfloat16} x XLA {off, on} on the Keras backend KERAS_BACKEND names
# (KERAS_BACKEND=jax needs no TensorFlow), and the original's float32 step on the
# same GPU when torch is importable and `--torch_original PATH` names a checkout of
# it (git clone https://github.com/chandar-lab/PatchUp PATH); `--impls torch` times
# the original alone. One configuration at a time, each in its worker process with
# a time limit (--timeout, 100 s); one that fails is reported and the rest go on;
# what no longer fits in the budget (GPU_BENCH_BUDGET_S, default 420 s) is reported
# as skipped. Extra arguments go to `python -m benchmarks.gpu_bench`, which takes
# those of `python -m benchmarks` (e.g. --steps 20 --budget 300 --archs preactresnet18).
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu_bench_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export TF_FORCE_GPU_ALLOW_GROWTH=true
export PYTHONUNBUFFERED=1
cd "$ROOT" || exit 1
{
  echo "== $(date -Is) $(uname -a)"
  nvidia-smi 2>&1 | head -15 || true
  "$PYTHON" -c "import sys; print('python', sys.version)"
} >"$OUT/gpu_env.txt" 2>&1
# A hard stop a little past the budget, whatever happens inside.
BUDGET="${GPU_BENCH_BUDGET_S:-420}"
timeout --kill-after=10 "$((BUDGET + 40))" \
  "$PYTHON" -m benchmarks.gpu_bench --out "$OUT" --budget "$BUDGET" "$@" \
  2> >(tee "$OUT/gpu_log.txt" >&2)
status=$?
if [ "$status" -ne 0 ]; then
  echo "benchmarks.gpu_bench exited with $status; partial results (if any) are in $OUT" >&2
fi
exit "$status"
