#!/usr/bin/env bash
# Issue 10's narrower ApproxNet: factor-4 ApproxNets of the demo's BBC teacher with 12 (the demo's own),
# 4 and 2 heads, distilled with the demo's settings (`sttabt distill --heads H`); then ABT's accuracy on
# all 444 BBC test articles (256 tokens, as the demo) and its wall clock at 512 tokens (batch 1 and 32,
# HF dense vs ABT interleaved in each run) for every head count. `make demo` first.
#
#   bash benchmarks/run_approx_heads.sh                  # everything (about 1 h on 2 cores)
#   STEPS="eval bench" bash benchmarks/run_approx_heads.sh   # once the ApproxNets exist
#
# Overrides: STEPS (distill eval bench), HEADS (default "4 2"), KEEPS (default "0.1 0.15 0.3"), THREADS
# (default 1), DTYPES (default fp32), OUT (default benchmarks/results/approx_heads), SKIP_EXISTING=1.
set -euo pipefail
DTYPES="${DTYPES:-fp32}"  # before the common file, whose default is "fp32 bf16"
source "$(dirname "${BASH_SOURCE[0]}")/_bench_common.sh"
STEPS="${STEPS:-distill eval bench}"
HEADS="${HEADS:-4 2}"
KEEPS="${KEEPS:-0.1 0.15 0.3}"
THREADS="${THREADS:-1}"
OUT="${OUT:-benchmarks/results/approx_heads}"
TEACHER=artifacts/demo/minilm-bbc
A=artifacts/approx_heads
has() { [[ " $STEPS " == *" $1 "* ]]; }
[ -d "$TEACHER" ] || { echo "run make demo first ($TEACHER)" >&2; exit 2; }
mkdir -p "$OUT" "$A"

if has distill; then
  for heads in $HEADS; do
    dir=$(approx_dir "$heads")
    if skip "distill_h$heads" "$dir/distill_log.json"; then continue; fi
    echo "+ distill --heads $heads"
    "$PY" -m sttabt distill --teacher "$TEACHER" --task bbc --factor 4 --heads "$heads" --output "$dir" \
      --overwrite --general-epochs 1 --epochs 3 --lr 2e-3 --batch-size 8 --max-length 256 \
      --max-train-examples 400 --quality-examples 64 --seed 0 --no-progress
    cp "$dir/distill_log.json" "$OUT/distill_log_h$heads.json"
  done
fi

if has eval; then
  cp artifacts/demo/approx-bbc-f4/distill_log.json "$OUT/distill_log_h12.json"  # the demo's 12-head one
  for heads in 12 $HEADS; do
    for keep in $KEEPS; do
      file="$OUT/eval_h${heads}_k$keep.json"
      if skip "eval_h$heads" "$file"; then continue; fi
      echo "+ evaluate heads $heads keep $keep"
      "$PY" -m sttabt evaluate --model "$TEACHER" --task bbc --split test --method abt \
        --approx "$(approx_dir "$heads")" --keep "$keep" --max-length 256 --batch-size 16 --device "$DEVICE" \
        --output "$file" --no-progress
    done
  done
fi

if has bench; then
  for dtype in $DTYPES; do
    for batch in 1 32; do
      rounds="3 12"
      [ "$batch" = 32 ] && rounds="1 4"
      read -r warmup repeats <<<"$rounds"
      for heads in 12 $HEADS; do
        file="$OUT/bench_h${heads}_k0.1_b${batch}_s512_${dtype}_t$THREADS.json"
        if skip "bench_h$heads" "$file"; then continue; fi
        echo "== $file"
        "$PY" -m sttabt bench --model "$TEACHER" --method abt --approx "$(approx_dir "$heads")" --keep 0.1 \
          --batch-size "$batch" --seq-len 512 --dtype "$dtype" --threads "$THREADS" --warmup "$warmup" \
          --repeats "$repeats" --skip-runtime-dense --device "$DEVICE" --output "$file"
      done
    done
  done
fi
"$PY" benchmarks/aggregate_approx_heads.py "$OUT"
