#!/usr/bin/env bash
# The GPU checks of docs/pipeline.md "Speed" in one run, on a machine with one
# CUDA GPU: the suite's GPU tests (tests/test_cuda.py; its benchmark smoke test is
# left to the next part), the training benchmark at the official architecture and
# 1024 px (achieved TFLOP/s, a job's frames per minute, a 300-frame shot's
# minutes; 2 rounds, since on a TF32 GPU the tf32 rows make seven loops per
# stage), the memory of one step at 1024 px, then the fused epilogue's Triton
# kernels against the eager operations in a 1024 px bfloat16 step (the measurement
# that decides whether CUDA fuses them too). Each part has its own time limit,
# together 9 min 20 s, so that the whole run fits one 10-minute call of a lent
# machine (not yet run on a GPU). Logs and the benchmark's JSON go to $OUT
# (default: a fresh temporary folder). Uses the python3 that holds a CUDA torch
# (PYTHON overrides); the project's CPU .venv is not for this. With
# REFERENCE_CODE naming a checkout of rotemtzaban/STIT (and the lpips package
# importable), the benchmark also times STIT's own code in its rounds (which
# first builds its two CUDA plugins with nvcc: give that part more time, or run
# it alone with GPU_CHECK_PARTS=bench).
#
#     bash bench/gpu_check.sh                  # all four
#     GPU_CHECK_PARTS=bench bash bench/gpu_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
PARTS=${GPU_CHECK_PARTS:-tests bench memory epilogue}
export PYTHONUNBUFFERED=1 FACESTITCH_HOME=${FACESTITCH_HOME:-$(mktemp -d)}
mkdir -p "$OUT"
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null
then
    echo "gpu_check: $PY has no torch that sees a CUDA GPU (set PYTHON)" >&2
    exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
status=0
for part in $PARTS; do
    case $part in
        tests)
            timeout 140 "$PY" -m pytest -q -p no:cacheprovider -m "not slow" \
                tests/test_cuda.py \
                2>&1 | tee "$OUT/tests.log" || status=1 ;;
        bench)
            timeout 230 "$PY" bench/pipeline.py --arch official --device cuda \
                --size 1024 --frames 4 --pti-passes 3 --stitch-steps 5 --rounds 2 \
                ${REFERENCE_CODE:+--reference-code "$REFERENCE_CODE"} \
                --json "$OUT/bench1024.json" 2>&1 | tee "$OUT/bench1024.log" \
                || status=1 ;;
        memory)
            timeout 100 "$PY" bench/pipeline.py --arch official --device cuda \
                --size 64 --frames 2 --pti-passes 1 --stitch-steps 1 --rounds 1 \
                --only pti --memory --json "$OUT/memory.json" 2>&1 \
                | tee "$OUT/memory.log" || status=1 ;;
        epilogue)
            timeout 90 "$PY" bench/epilogue.py --device cuda --size 1024 \
                --batch 2 --dtypes bfloat16 --rounds 5 \
                --json "$OUT/epilogue.json" 2>&1 | tee "$OUT/epilogue.log" \
                || status=1 ;;
        *) echo "unknown part $part (tests, bench, memory, epilogue)"; status=2 ;;
    esac
done
echo "gpu_check: status $status, files in $OUT"
exit $status
