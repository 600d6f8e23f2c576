#!/usr/bin/env bash
# Issue 11's vision results: the Fashion-MNIST ViT teacher trained here, the two ApproxNets (Fashion-MNIST,
# and DeiT-Tiny distilled on the 1,000 ImageNet sample images of ../shared), the two sweeps, the kept-patch
# picture and the speed benchmarks. Models go to artifacts/ (git-ignored), results to benchmarks/results/.
#
#   bash benchmarks/run_vision.sh                                # everything (about 1.5 h on 2 cores)
#   STEPS="grids bench" bash benchmarks/run_vision.sh            # once the models exist
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_bench_common.sh"
STEPS="${STEPS:-teacher distill grids picture bench}"
A=artifacts R=benchmarks/results/vision V=../shared/data/vision
mkdir -p $R
has() { [[ " $STEPS " == *" $1 "* ]]; }
run() { echo "+ sttabt $*"; "$PY" -m sttabt "$@"; }

# fp32: bf16 autocast trains this small ViT 8x slower on the AVX2-only CPU it was trained on (benchmarks/train_dtype_speed.py, results/vision/vit_train_dtype_speed.json).
# No augmentation: with shifts/flips/erasing it learned far slower (held-out 74.6 % after 3 epochs).
has teacher && run finetune --model vit-small-fmnist --task fashion-mnist --output $A/vit-small-fmnist \
  --epochs 12 --lr 1e-3 --batch-size 128 --eval-batch-size 256 --weight-decay 0.05 --max-heldout-examples 3000 \
  --no-augment --seed 0 --no-progress
has teacher && cp $A/vit-small-fmnist/train_log.json $R/fmnist_teacher_train_log.json
has distill && run distill --teacher $A/vit-small-fmnist --task fashion-mnist --output $A/approx-vit-small-fmnist-f4 \
  --factor 4 --init-mode interpolate --general-epochs 1 --epochs 2 --max-train-examples 20000 --lr 1e-3 \
  --batch-size 64 --eval-batch-size 256 --quality-examples 2000 --seed 0 --no-progress
has distill && cp $A/approx-vit-small-fmnist-f4/distill_log.json $R/fmnist_approx_distill_log.json
has distill && run distill --teacher $V/deit-tiny-patch16-224 --task imagenet --data-dir $V/imagenet-sample-1000-256px \
  --eval-data-dir $V/imagenet-val-100:$V/imagenet-val-650-227px --output $A/approx-deit-tiny-f4 --factor 4 \
  --init-mode interpolate --general-epochs 1 --epochs 4 --lr 1e-3 --batch-size 32 --eval-batch-size 64 \
  --quality-examples 200 --seed 0 --no-progress
has distill && cp $A/approx-deit-tiny-f4/distill_log.json $R/deit_tiny_approx_distill_log.json
has grids && run sweep --config benchmarks/configs/deit_tiny_imagenet_grid.toml
has grids && run sweep --config benchmarks/configs/fmnist_vit_grid.toml
has picture && run visualize --model $A/vit-small-fmnist --task fashion-mnist --split test --method abt \
  --keep 0.3 --approx $A/approx-vit-small-fmnist-f4 --examples 4 --output $R/fmnist_kept_patches.png
# Speed: dense HF vs top-k (keep 0.5, 0.7) and ABT (keep 0.5) at 224x224, fp32 and bf16, batch 1 and 32,
# one thread (the committed run: DeiT-S with a random factor-4 ApproxNet, which timing needs no training;
# MODELS="random:deit-small $V/deit-tiny-patch16-224" adds DeiT-Ti with its distilled ApproxNet).
if has bench; then
  for model in ${MODELS:-random:deit-small}; do
    name=$(basename "${model#random:}")
    approx=random:4; [[ $model == random:* ]] || approx=$A/approx-deit-tiny-f4
    for dtype in fp32 bf16; do
      for batch in 1 32; do
        for keep in 0.5 0.7; do
          run bench --model "$model" --method topk --keep $keep --batch-size $batch --dtype $dtype --threads 1 \
            --warmup 2 --repeats 3 --skip-runtime-dense --output $R/bench/${name}_topk_k${keep}_${dtype}_b${batch}.json
        done
        run bench --model "$model" --method abt --approx $approx --keep 0.5 --batch-size $batch --dtype $dtype \
          --threads 1 --warmup 2 --repeats 3 --skip-runtime-dense --output $R/bench/${name}_abt_k0.5_${dtype}_b${batch}.json
      done
    done
  done
  "$PY" benchmarks/aggregate_runtime.py $R/bench
fi
exit 0
