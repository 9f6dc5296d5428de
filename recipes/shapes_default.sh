#!/usr/bin/env bash
# The bundled default model: the whole pipeline trained on the shapes train split.
# Rerun from the repository root:  bash recipes/shapes_default.sh   (about 70 min on a 2-core CPU)
# Wall times and machine are appended to runs/shapes/recipe_times.txt.
set -euo pipefail
out=${OUT:-runs/shapes}
mkdir -p "$out"
stamp() { echo "$1 $(date -u +%FT%TZ) $(nproc) cores $(uname -m)" >> "$out/recipe_times.txt"; }

stamp start
minidalle make-shapes --out data/shapes-train --split train --num 40000 --seed 0
minidalle make-shapes --out data/shapes-heldout --split train --num 500 --seed 1

# Stage 1: the image tokenizer (flags in recipes/tokenizer_shapes.json)
python train_tokenizer.py --config recipes/tokenizer_shapes.json --data data/shapes-train --output_dir "$out/tokenizer"
stamp tokenizer-done

# Stage 2: the prior (flags in recipes/prior_shapes.json)
python train_prior.py --config recipes/prior_shapes.json --data data/shapes-train \
    --image_tokenizer "$out/tokenizer/image_tokenizer" --output_dir "$out/prior"
stamp prior-done

# Bundle: float16 weights inside the package
minidalle export-pipeline --source "$out/prior/pipeline" --out minidalle/default_model --dtype float16
stamp end
