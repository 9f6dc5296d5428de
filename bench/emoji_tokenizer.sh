#!/usr/bin/env bash
# The image tokenizer on the Twemoji export at 64x64 (10% held out by the exporter), trained with
# exactly the shapes commands of recipes/shapes_default.sh (same configs, same steps); only the
# data flags differ. Stage 1a, then the decoder on argmax codes (stage 1b); prints the held-out figures.
set -euo pipefail
out=${OUT:-runs/emoji}
data="--data data/emoji --split train --eval_data data/emoji --eval_split test"
[ -f data/emoji/train/metadata.jsonl ] || minidalle export-dataset emoji --out data/emoji --resolution 64
mkdir -p "$out"
start=$(date +%s)
python train_tokenizer.py --config recipes/tokenizer_shapes.json $data --output_dir "$out/tokenizer" --overwrite_output_dir
python train_tokenizer.py --config recipes/tokenizer_shapes_decoder.json --init_from "$out/tokenizer/image_tokenizer" \
    $data --output_dir "$out/tokenizer-decoder" --overwrite_output_dir
echo "{\"wall_minutes\": $(( ($(date +%s) - start) / 60 )), \"machine\": \"$(nproc) cores $(uname -m)\"}" | tee "$out/time.json"
cat "$out/tokenizer/eval.json" "$out/tokenizer-decoder/eval.json"
