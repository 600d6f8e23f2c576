#!/usr/bin/env bash
# Issue 3's measured results: fine-tune MiniLM-L6, distill a factor-4 ApproxNet, then sweep ABT, the ABT
# oracle and top-k over keep ratios on SST-2 dev and on BBC News test, plus ABT wall-clock rows.
# Artifacts (models) go to artifacts/ (git-ignored); results JSON/markdown/plots to benchmarks/results/.
#
#   bash benchmarks/run_text_sweeps.sh            # everything (several hours of CPU on 2 cores; see README)
#   STEPS="sweep-sst2 bench-sst2" bash benchmarks/run_text_sweeps.sh   # a subset, once artifacts exist
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
A=artifacts
R=benchmarks/results
STEPS="${STEPS:-finetune-sst2 distill-sst2 sweep-sst2 bench-sst2 finetune-bbc distill-bbc sweep-bbc bench-bbc}"
run() { echo "+ $*"; "$PY" -m sttabt "$@"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }

# -- SST-2 (max length 64 covers every SST-2 sentence) -----------------------------------------------------
has finetune-sst2 && run finetune --model minilm --task sst2 --output $A/minilm-sst2 --epochs 2 \
  --max-train-examples 20000 --max-length 64 --group-by-length --seed 0
has distill-sst2 && run distill --teacher $A/minilm-sst2 --task sst2 --factor 4 --output $A/approx-sst2-f4 \
  --general-epochs 1 --epochs 2 --max-train-examples 16000 --lr 1e-3 --seed 0
has sweep-sst2 && run sweep --model $A/minilm-sst2 --task sst2 --approx $A/approx-sst2-f4 --max-length 64 \
  --batch-size 64 --output-dir $R/sst2 --no-progress
if has bench-sst2; then
  run bench --model $A/minilm-sst2 --method abt --approx $A/approx-sst2-f4 --keep 0.3 --batch-size 1 \
    --seq-len 64 --warmup 3 --repeats 15 --threads 1 --breakdown --output $R/sst2/bench_abt_k0.3_b1.json
  run bench --model $A/minilm-sst2 --method abt --approx $A/approx-sst2-f4 --keep 0.3 --batch-size 32 \
    --seq-len 64 --warmup 2 --repeats 8 --threads 1 --breakdown --output $R/sst2/bench_abt_k0.3_b32.json
fi

# -- BBC News (long documents; evaluated at max length 512) -------------------------------------------------
has finetune-bbc && run finetune --model minilm --task bbc --output $A/minilm-bbc --epochs 2 --max-length 256 \
  --batch-size 16 --lr 1e-4 --max-train-examples 800 --seed 0
has distill-bbc && run distill --teacher $A/minilm-bbc --task bbc --factor 4 --output $A/approx-bbc-f4 \
  --general-epochs 1 --epochs 2 --max-length 256 --max-heldout-examples 128 --lr 1e-3 --seed 0
has sweep-bbc && run sweep --model $A/minilm-bbc --task bbc --split test --approx $A/approx-bbc-f4 \
  --max-length 512 --batch-size 16 --keeps ${BBC_KEEPS:-0.05,0.1,0.2,0.3,0.5} --output-dir $R/bbc --no-progress
if has bench-bbc; then
  run bench --model $A/minilm-bbc --method abt --approx $A/approx-bbc-f4 --keep 0.1 --batch-size 1 \
    --seq-len 512 --warmup 2 --repeats 10 --threads 1 --breakdown --output $R/bbc/bench_abt_k0.1_b1.json
  run bench --model $A/minilm-bbc --method abt --approx $A/approx-bbc-f4 --keep 0.1 --batch-size 32 \
    --seq-len 512 --warmup 1 --repeats 3 --threads 1 --breakdown --output $R/bbc/bench_abt_k0.1_b32.json
fi
