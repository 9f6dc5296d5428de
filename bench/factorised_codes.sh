#!/usr/bin/env bash
# Whole-code against factorised image codes for the 16x16 shapes prior, on zero-shot prompts.
#   bash bench/factorised_codes.sh [OUT]        (STEPS=800 prior steps; NUM=400 reported prompts)
# The whole-code prior is minidalle/shapes16_model (recipes/shapes_16x16.sh, 2,500 steps); this trains the
# same prior recipe (recipes/prior_shapes.json) with --factorised_image_codes on the same image tokenizer's
# codes for STEPS steps, then: which zero-shot scenes need codes the training images never have
# (bench/unseen_codes.py), and sample.py's defaults judged on 64 validation prompts (zero-shot seed 2002)
# and on NUM reported ones (seed 1002) for both 16x16 priors and the bundled 8x8 model, and a picture of the
# first 12 validation prompts' samples of the three (OUT/zeroshot-16x16.png; the README's docs/zeroshot-16x16.png).
# Each step's wall time and the machine go to OUT/times.txt.
set -euo pipefail
out=${1:-runs/factorised16}
steps=${STEPS:-800}
num=${NUM:-400}
tokenizer=minidalle/shapes16_model/image_tokenizer
mkdir -p "$out"
stamp() { echo "$1 $(date -u +%FT%TZ) $(nproc) cores $(uname -m) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" >> "$out/times.txt"; }

stamp start
[ -d data/shapes-train40k ] || minidalle make-shapes --out data/shapes-train40k --split train --num 40000 --seed 0
[ -d data/codes16-train40k ] || minidalle encode --image_tokenizer "$tokenizer" --data data/shapes-train40k \
    --out data/codes16-train40k
stamp encoded
python bench/unseen_codes.py --model minidalle/shapes16_model --codes data/codes16-train40k > "$out/unseen-16x16.jsonl"
python bench/unseen_codes.py --model shapes --num-train 10000 > "$out/unseen-8x8.jsonl"  # fewer: an upper bound
stamp unseen
python train_prior.py --config recipes/prior_shapes.json --codes data/codes16-train40k --data data/shapes-train40k \
    --image_tokenizer "$tokenizer" --output_dir "$out/prior" --factorised_image_codes --max_steps "$steps" \
    --eval_steps "$((steps / 2))" --checkpointing_steps 200 --torch_compile
stamp prior
for pair in "factorised16:$out/prior/pipeline" whole16:minidalle/shapes16_model bundled8:shapes; do
    name=${pair%%:*} model=${pair#*:}
    python bench/eval_shapes_model.py --model "$model" --only zeroshot --num-prompts 64 --zeroshot-seed 2002 \
        --no-guidance-off --skip-rank --out "$out/samples/$name-validation" > "$out/eval-$name-validation.jsonl"
    python bench/eval_shapes_model.py --model "$model" --only zeroshot --num-prompts "$num" \
        --no-guidance-off --skip-rank --out "$out/samples/$name" > "$out/eval-$name.jsonl"
    stamp "judged $name"
done
python bench/sample_rows.py "$out/zeroshot-16x16.png" --num 12 \
    "8x8 bundled=$out/samples/bundled8-validation/zeroshot-g1.5" \
    "16x16 whole codes=$out/samples/whole16-validation/zeroshot-g1.5" \
    "16x16 factorised=$out/samples/factorised16-validation/zeroshot-g1.5"
cat "$out"/unseen-*.jsonl "$out"/eval-*.jsonl
