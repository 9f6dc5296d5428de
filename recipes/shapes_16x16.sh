#!/usr/bin/env bash
# The shapes pipeline on a 16x16 grid: FSQ + the VQ-GAN losses (the stage 1 comparison's
# fsq_gan_16x16 row, whose round trip keeps 97.5% of zero-shot scenes against 58.0% for the 8x8 dVAE),
# then the same prior recipe as recipes/shapes_default.sh over 256 image codes instead of 64.
# Rerun from the repository root:  bash recipes/shapes_16x16.sh
# Wall times and the machine are appended to $OUT/recipe_times.txt.
set -euo pipefail
out=${OUT:-runs/shapes16}
mkdir -p "$out"
stamp() { echo "$1 $(date -u +%FT%TZ) $(nproc) cores $(uname -m)" >> "$out/recipe_times.txt"; }

stamp start
minidalle make-shapes --out data/shapes-train40k --split train --num 40000 --seed 0
minidalle make-shapes --out data/shapes-heldout --split train --num 500 --seed 1

# Stage 1a: the image tokenizer, on the first 20,000 images (flags in recipes/tokenizer_shapes_16x16.json;
# fp32 as in the comparison)
python train_tokenizer.py --config recipes/tokenizer_shapes_16x16.json --data data/shapes-train40k --max_examples 20000 \
    --eval_data data/shapes-heldout --output_dir "$out/tokenizer" --overwrite_output_dir
stamp tokenizer-done
minidalle encode --image_tokenizer "$out/tokenizer/image_tokenizer" --data data/shapes-train40k --out "$out/codes-train40k"
stamp encode-done
# Stage 1b: the decoder alone on all 40,000 images, encoder frozen, so the codes (and the prior trained on them)
# stay valid; L1 + perceptual, no discriminator (recipes/tokenizer_shapes_16x16_decoder.json). It is not needed
# for FSQ's codes (there is no relaxation), but it lifts held-out PSNR 33.1 -> 37.7 dB and the attributes kept
# 97.6% -> 99.8%: the first stage's 753 steps leave the decoder short of training on small diamonds.
python train_tokenizer.py --config recipes/tokenizer_shapes_16x16_decoder.json --init_from "$out/tokenizer/image_tokenizer" \
    --data data/shapes-train40k --eval_data data/shapes-heldout --output_dir "$out/tokenizer-decoder" --overwrite_output_dir
stamp decoder-done

# Stage 2: the prior on all 40,000 images (flags in recipes/prior_shapes.json; compiled: 1.5x faster
# per step on the 2-core CPU at 272 tokens, the same steps)
python train_prior.py --config recipes/prior_shapes.json --codes "$out/codes-train40k" --data data/shapes-train40k \
    --image_tokenizer "$out/tokenizer/image_tokenizer" --output_dir "$out/prior" --overwrite_output_dir \
    --torch_compile --checkpointing_steps 250
stamp prior-done

# Bundle: float16 weights inside the package
minidalle export-pipeline --source "$out/prior/pipeline" --image_tokenizer "$out/tokenizer-decoder/image_tokenizer" \
    --out "${BUNDLE:-minidalle/default_model}" --dtype float16
stamp end
