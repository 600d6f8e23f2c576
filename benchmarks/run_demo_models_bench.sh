#!/usr/bin/env bash
# Wall clock of ABT and top-k on the demo's trained BBC models (`make demo` first): HF dense vs the
# method, 512 random-token inputs, batch 1 and 32, fp32 and bf16, the given thread counts.
#
# Environment overrides: PYTHON, OUT (default benchmarks/results/abt_models), THREADS_LIST (default "1 2"),
# DTYPES (default "fp32 bf16"), DEVICE, ONLY, TEACHER / APPROX (default the demo's), SKIP_EXISTING=1.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_bench_common.sh"
OUT="${OUT:-benchmarks/results/abt_models}"
THREADS_LIST="${THREADS_LIST:-1 2}"
TEACHER="${TEACHER:-artifacts/demo/minilm-bbc}"
APPROX="${APPROX:-artifacts/demo/approx-bbc-f4}"
[ -d "$TEACHER" ] && [ -d "$APPROX" ] || { echo "run make demo first ($TEACHER, $APPROX)" >&2; exit 2; }
mkdir -p "$OUT"

run() {  # run NAME BATCH DTYPE THREADS ARGS...
  local name=$1 batch=$2 dtype=$3 threads=$4
  shift 4
  local file="$OUT/bbc_${name}_b${batch}_s512_${dtype}_t${threads}.json" rounds="3 12"
  [ "$batch" = 32 ] && rounds="1 4"
  if skip "$file" "$file"; then return 0; fi
  read -r warmup repeats <<<"$rounds"
  echo "== $file"
  "$PY" -m sttabt bench --model "$TEACHER" "$@" --batch-size "$batch" --seq-len 512 --dtype "$dtype" \
    --threads "$threads" --warmup "$warmup" --repeats "$repeats" --skip-runtime-dense --device "$DEVICE" \
    --output "$file"
}

for threads in $THREADS_LIST; do
  for dtype in $DTYPES; do
    for batch in 1 32; do
      run abt_k0.1 "$batch" "$dtype" "$threads" --method abt --approx "$APPROX" --keep 0.1
      run topk_k0.25 "$batch" "$dtype" "$threads" --method topk --keep 0.25
    done
  done
done
"$PY" benchmarks/aggregate_runtime.py "$OUT"
