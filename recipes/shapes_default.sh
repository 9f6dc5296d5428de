#!/usr/bin/env bash
# The bundled default model: the whole pipeline trained on the shapes train split.
# Rerun from the repository root:  bash recipes/shapes_default.sh
# Wall times and the machine are appended to $OUT/recipe_times.txt.
set -euo pipefail
out=${OUT:-runs/shapes}
mkdir -p "$out"
stamp() { echo "$1 $(date -u +%FT%TZ) $(nproc) cores $(uname -m)" >> "$out/recipe_times.txt"; }

stamp start
minidalle make-shapes --out data/shapes-train40k --split train --num 40000 --seed 0
minidalle make-shapes --out data/shapes-heldout --split train --num 500 --seed 1

# Stage 1a: the image tokenizer, on the first 20,000 images (flags in recipes/tokenizer_shapes.json)
python train_tokenizer.py --config recipes/tokenizer_shapes.json --data data/shapes-train40k --max_examples 20000 \
    --eval_data data/shapes-heldout --output_dir "$out/tokenizer" --overwrite_output_dir
stamp tokenizer-done
# Stage 1b: the decoder alone, on decode(argmax codes) — the path used at inference; the codes do not change
python train_tokenizer.py --config recipes/tokenizer_shapes_decoder.json --init_from "$out/tokenizer/image_tokenizer" \
    --data data/shapes-train40k --max_examples 20000 --eval_data data/shapes-heldout --output_dir "$out/tokenizer-decoder" --overwrite_output_dir
stamp decoder-done

# Stage 2: the prior on all 40,000 images (flags in recipes/prior_shapes.json)
python train_prior.py --config recipes/prior_shapes.json --data data/shapes-train40k \
    --image_tokenizer "$out/tokenizer-decoder/image_tokenizer" --output_dir "$out/prior" --overwrite_output_dir
stamp prior-done

# Bundle: float16 weights inside the package
minidalle export-pipeline --source "$out/prior/pipeline" --out minidalle/default_model --dtype float16
stamp end
