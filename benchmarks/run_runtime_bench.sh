#!/usr/bin/env bash
# Wall-clock benchmark of the sparse runtime: HF dense vs runtime dense vs top-k on random-weight
# MiniLM-L6 and BERT-base shapes, then a summary table. See benchmarks/README.md for details and timing.
#
# Environment overrides:
#   PYTHON         interpreter with sttabt installed (default: .venv/bin/python, else python3)
#   OUT            results folder (default: benchmarks/results/runtime)
#   DEVICE         cpu | cuda | auto (default: cpu)
#   THREADS        torch intra-op threads (default: 1, the setting of the recorded results: single-thread
#                  timings are the most stable on a small machine; set THREADS=$(nproc) for all cores)
#   ONLY           run only configurations whose name contains this substring (e.g. ONLY=minilm_b1_)
#   SKIP_EXISTING  1: keep results that already exist (resume an interrupted run)
#   DTYPES         precisions to run (default: "fp32 bf16"; bf16 = autocast, weights stay fp32. On a CPU
#                  without native bf16 (no avx512_bf16 / AMX) bf16 is several times slower: DTYPES=fp32)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_bench_common.sh"
OUT="${OUT:-benchmarks/results/runtime}"
THREADS="${THREADS:-1}"
mkdir -p "$OUT"

# Warm-up and timed rounds per (model, batch, seq): fewer rounds where one forward takes seconds.
rounds() {
  case "$1_b$2_s$3" in
    minilm_b1_s128) echo "5 30" ;;
    minilm_b1_s512) echo "3 20" ;;
    minilm_b32_s128) echo "2 10" ;;
    minilm_b32_s512) echo "1 5" ;;
    bert-base_b1_s128) echo "3 20" ;;
    bert-base_b1_s512) echo "2 10" ;;
    bert-base_b32_s128) echo "1 5" ;;
    bert-base_b32_s512) echo "1 3" ;;
    *) echo "1 3" ;;
  esac
}

bench() {  # bench MODEL BATCH SEQ KEEP DTYPE [WARMUP REPEATS]
  local model=$1 batch=$2 seq=$3 keep=$4 dtype=$5
  local name="${model}_b${batch}_s${seq}_k${keep}_${dtype}"
  local warmup repeats
  read -r warmup repeats <<<"${6:-} ${7:-}"
  if [ -z "$warmup" ]; then read -r warmup repeats <<<"$(rounds "$model" "$batch" "$seq")"; fi
  if skip "$name" "$OUT/$name.json"; then return 0; fi
  echo "== $name (warm-up $warmup, repeats $repeats)"
  "$PY" -m sttabt bench --model "random:$model" --method topk --keep "$keep" --schedule constant \
    --batch-size "$batch" --seq-len "$seq" --device "$DEVICE" --dtype "$dtype" \
    --warmup "$warmup" --repeats "$repeats" --threads "$THREADS" --seed 0 --breakdown --output "$OUT/$name.json"
}

start=$(date +%s)
for dtype in $DTYPES; do
  for model in minilm bert-base; do
    for batch in 1 32; do
      for seq in 128 512; do
        for keep in 0.5 0.25; do
          bench "$model" "$batch" "$seq" "$keep" "$dtype"
        done
      done
    done
  done
done

"$PY" benchmarks/aggregate_runtime.py "$OUT"
echo "total $(( $(date +%s) - start )) s"
