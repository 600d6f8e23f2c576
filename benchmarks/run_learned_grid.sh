#!/usr/bin/env bash
# Issue 8's results. SST-2: one teacher for every method (MiniLM-L6 fine-tuned on the full SST-2 train
# split in bf16, which benchmarks/train_dtype_speed.py measured 1.46x faster than fp32 here), its factor-4
# ApproxNet distilled longer than before, then the config grids (real lengths with latency, and the paper's
# padded-length protocol). BBC News (steps bbc, bbc-reference): the same grids on the `make demo` teacher
# and ApproxNet, fp32. Models go to artifacts/ (git-ignored), results to benchmarks/results/.
#
#   bash benchmarks/run_learned_grid.sh                      # everything (about 1.5 h on 2 cores)
#   STEPS="grid reference" bash benchmarks/run_learned_grid.sh   # the grids only, once the models exist
#   STEPS="bbc bbc-reference" bash benchmarks/run_learned_grid.sh   # BBC News on the demo's models (make demo)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_bench_common.sh"
STEPS="${STEPS:-teacher distill grid reference}"
A=artifacts
has() { [[ " $STEPS " == *" $1 "* ]]; }
run() { echo "+ sttabt $*"; "$PY" -m sttabt "$@"; }

has teacher && run finetune --model minilm --task sst2 --output $A/minilm-sst2-full --epochs 2 --max-length 64 \
  --group-by-length --dtype bf16 --seed 0 --no-progress
has teacher && cp $A/minilm-sst2-full/train_log.json benchmarks/results/sst2/teacher_full_train_log.json
has distill && run distill --teacher $A/minilm-sst2-full --task sst2 --factor 4 --output $A/approx-sst2-full-f4 \
  --general-epochs 1 --epochs 3 --max-train-examples 16000 --max-length 64 --lr 1e-3 --seed 0 --no-progress
has distill && cp $A/approx-sst2-full-f4/distill_log.json benchmarks/results/sst2/approx_full_distill_log.json
has grid && run sweep --config benchmarks/configs/sst2_grid.toml
has reference && run sweep --config benchmarks/configs/sst2_grid_reference.toml
has bbc && run sweep --config benchmarks/configs/bbc_grid.toml
has bbc-reference && run sweep --config benchmarks/configs/bbc_grid_reference.toml
exit 0
