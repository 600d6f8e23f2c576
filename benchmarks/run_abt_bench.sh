#!/usr/bin/env bash
# Wall-clock benchmark of ABT (STTABT back-tracking) against the unmodified HF dense forward, on
# random-weight MiniLM-L6 and BERT-base shapes with a random-init factor-4 ApproxNet (`--approx random`):
# reproducible with no trained artifact. The ApproxNet pass and the set construction run inside every
# timed call. Then a summary table. See benchmarks/README.md.
#
# Environment overrides:
#   PYTHON         interpreter with sttabt installed (default: .venv/bin/python, else python3)
#   OUT            results folder (default: benchmarks/results/abt)
#   DEVICE         cpu | cuda | auto (default: cpu)
#   THREADS_LIST   torch intra-op thread counts to run (default: "1 2")
#   ONLY           run only configurations whose name contains this substring (e.g. ONLY=minilm_b1_)
#   SKIP_EXISTING  1: keep results that already exist (resume an interrupted run)
#   DTYPES         precisions to run (default: "fp32 bf16"; bf16 = autocast, weights stay fp32)
#   APPROX         the ApproxNet (default: random, factor 4 with the model's heads; random:4x4 gives it
#                  4 heads, the narrower ApproxNet of `sttabt distill --heads 4`)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_bench_common.sh"
OUT="${OUT:-benchmarks/results/abt}"
THREADS_LIST="${THREADS_LIST:-1 2}"
APPROX="${APPROX:-random}"
mkdir -p "$OUT"

# Warm-up and timed rounds per (model, batch, seq); each round times HF dense and ABT once.
rounds() {
  case "$1_b$2_s$3" in
    minilm_b1_s64) echo "5 30" ;;
    minilm_b1_s128) echo "5 20" ;;
    minilm_b1_s512) echo "3 12" ;;
    minilm_b32_s128) echo "2 6" ;;
    minilm_b32_s512) echo "1 4" ;;
    bert-base_b1_s64) echo "3 15" ;;
    bert-base_b1_s128) echo "3 12" ;;
    bert-base_b1_s512) echo "2 6" ;;
    bert-base_b32_s128) echo "1 2" ;;
    bert-base_b32_s512) echo "1 2" ;;
    *) echo "1 3" ;;
  esac
}

bench() {  # bench MODEL BATCH SEQ KEEP DTYPE THREADS
  local model=$1 batch=$2 seq=$3 keep=$4 dtype=$5 threads=$6
  local name="${model}_b${batch}_s${seq}_k${keep}_${dtype}_t${threads}"
  local warmup repeats
  read -r warmup repeats <<<"$(rounds "$model" "$batch" "$seq")"
  if skip "$name" "$OUT/$name.json"; then return 0; fi
  echo "== $name (warm-up $warmup, repeats $repeats)"
  "$PY" -m sttabt bench --model "random:$model" --method abt --approx "$APPROX" --keep "$keep" \
    --batch-size "$batch" --seq-len "$seq" --device "$DEVICE" --dtype "$dtype" --skip-runtime-dense \
    --warmup "$warmup" --repeats "$repeats" --threads "$threads" --seed 0 --output "$OUT/$name.json"
}

start=$(date +%s)
for threads in $THREADS_LIST; do
  for dtype in $DTYPES; do
    for model in minilm bert-base; do
      for keep in 0.3 0.5; do bench "$model" 1 64 "$keep" "$dtype" "$threads"; done
      for batch in 1 32; do
        for seq in 128 512; do
          for keep in 0.3 0.1; do
            # With random weights BERT-base keeps every token at k = 0.3 (ideal 1.2: dense plus the
            # ApproxNet), and its batch 32 x 512 runs take minutes: k = 0.1 only there.
            if [ "${model}_${batch}_${seq}_${keep}" = "bert-base_32_512_0.3" ]; then continue; fi
            bench "$model" "$batch" "$seq" "$keep" "$dtype" "$threads"
          done
        done
      done
    done
  done
done

"$PY" benchmarks/aggregate_runtime.py "$OUT"
echo "total $(( $(date +%s) - start )) s"
