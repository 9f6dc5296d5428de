#!/usr/bin/env bash
# The image tokenizer on the Twemoji export at 64x64 (10% held out by the exporter):
# stage 1a, then the decoder on argmax codes (stage 1b); prints the held-out figures.
set -euo pipefail
out=${OUT:-runs/emoji}
[ -f data/emoji/train/metadata.jsonl ] || minidalle export-dataset emoji --out data/emoji --resolution 64
python train_tokenizer.py --config recipes/tokenizer_emoji.json --data data/emoji --eval_data data/emoji --output_dir "$out/tokenizer"
python train_tokenizer.py --config recipes/tokenizer_shapes_decoder.json --init_from "$out/tokenizer/image_tokenizer" \
    --max_steps 500 --data data/emoji --split train --eval_data data/emoji --eval_split test --output_dir "$out/tokenizer-decoder"
cat "$out/tokenizer/eval.json" "$out/tokenizer-decoder/eval.json"
