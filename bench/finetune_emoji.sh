#!/usr/bin/env bash
# The README's OpenMoji fine-tune vs from-scratch comparison. Needs the OpenMoji export (share-alike, only for this):
#   minidalle export-dataset emoji-styles --styles openmoji --include-share-alike --out data/emoji-openmoji
# BASE=the pipeline to fine-tune (default: the bundled emoji model; after recipes/emoji_styles.sh, runs/emoji/prior/pipeline),
# TOKENIZER=the image tokenizer the from-scratch prior uses (default: the base's own), OUT=the runs' folder.
# Then: python bench/eval_emoji_model.py --model $OUT/{finetuned,scratch}/pipeline --data data/emoji-openmoji \
#   --num-train 0 --num-candidates 8 --only test_samples likelihood --out runs/eval-ft-{finetuned,scratch}
set -euo pipefail
base=${BASE:-emoji}
if [ -z "${TOKENIZER:-}" ]; then
    TOKENIZER=$(python -c "from minidalle.pipeline import resolve_model; print(resolve_model('$base') / 'image_tokenizer')")
fi
out=${OUT:-runs/emoji-ft}
common="--data data/emoji-openmoji --max_examples 500 --eval_split test --max_steps 250 --batch_size 32 --warmup_steps 25 --eval_steps 50 --checkpointing_steps 250 --image_steps 0 --threads 1 --mixed_precision auto --seed 0 --overwrite_output_dir"
python train_prior.py $common --init_from "$base" --learning_rate 3e-4 --output_dir "$out/finetuned"
python train_prior.py $common --config recipes/prior_emoji.json --image_tokenizer "$TOKENIZER" --learning_rate 1e-3 --output_dir "$out/scratch"
