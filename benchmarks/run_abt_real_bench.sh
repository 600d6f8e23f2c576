#!/usr/bin/env bash
# ABT on the demo's trained BBC models and real BBC test articles (`sttabt bench --task bbc`: articles of at
# least --seq-len tokens, truncated to it), for the ApproxNets with 12 (the demo's), 4 and 2 heads
# (`benchmarks/run_approx_heads.sh` distils the last two), and top-k for comparison: HF dense vs the method
# interleaved in each run, 64 / 128 / 512 tokens, batch 1 and 32, 1 and 2 threads. `make demo` first.
#
#   bash benchmarks/run_abt_real_bench.sh            # everything (about 1 h on an idle 2-core machine)
#
# Overrides: HEADS (default "12 4 2"), SEQS (default "64 128 512"), THREADS_LIST (default "1 2"),
# DTYPES (default fp32), OUT (default benchmarks/results/abt_real), ONLY, SKIP_EXISTING=1.
set -euo pipefail
DTYPES="${DTYPES:-fp32}"  # before the common file, whose default is "fp32 bf16"
source "$(dirname "${BASH_SOURCE[0]}")/_bench_common.sh"
HEADS="${HEADS:-12 4 2}"
SEQS="${SEQS:-64 128 512}"
THREADS_LIST="${THREADS_LIST:-1 2}"
OUT="${OUT:-benchmarks/results/abt_real}"
TEACHER=artifacts/demo/minilm-bbc
for heads in $HEADS; do
  [ -d "$(approx_dir "$heads")" ] || { echo "missing $(approx_dir "$heads"): make demo / run_approx_heads.sh" >&2; exit 2; }
done

run() {  # run FOLDER NAME BATCH SEQ DTYPE THREADS ARGS...
  local folder=$1 name=$2 batch=$3 seq=$4 dtype=$5 threads=$6
  shift 6
  local file="$OUT/$folder/${name}_b${batch}_s${seq}_${dtype}_t${threads}.json" rounds="3 12"
  [ "$batch" = 32 ] && rounds="1 5"
  if skip "$folder/$name" "$file"; then return 0; fi
  read -r warmup repeats <<<"$rounds"
  mkdir -p "$OUT/$folder"
  echo "== $file"
  "$PY" -m sttabt bench --model "$TEACHER" --task bbc --split test "$@" --batch-size "$batch" --seq-len "$seq" \
    --dtype "$dtype" --threads "$threads" --warmup "$warmup" --repeats "$repeats" --skip-runtime-dense \
    --device "$DEVICE" --output "$file"
}

keeps_for() { if [ "$1" = 64 ]; then echo "0.3 0.5"; else echo "0.1 0.3"; fi; }
for threads in $THREADS_LIST; do
  for dtype in $DTYPES; do
    for seq in $SEQS; do
      for batch in 1 32; do
        for heads in $HEADS; do
          for keep in $(keeps_for "$seq"); do
            run "h$heads" "abt_k$keep" "$batch" "$seq" "$dtype" "$threads" --method abt \
              --approx "$(approx_dir "$heads")" --keep "$keep"
          done
        done
        run topk topk_k0.25 "$batch" "$seq" "$dtype" "$threads" --method topk --keep 0.25
      done
    done
  done
done
for folder in "$OUT"/*/; do "$PY" benchmarks/aggregate_runtime.py "$folder" >/dev/null; done
echo "pivot tables: $OUT/*/pivot.md"
