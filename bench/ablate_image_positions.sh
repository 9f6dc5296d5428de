#!/usr/bin/env bash
# Row + column image-position embeddings (the DALL-E paper's) against one flat learned
# embedding per position, on the shapes codes: same data, seed and steps; prints the
# held-out bits per image token of each. Both runs go side by side, one thread each.
# Usage: bash bench/ablate_image_positions.sh IMAGE_TOKENIZER_DIR [STEPS]
set -euo pipefail
tok=${1:?image tokenizer folder}
steps=${2:-800}
for kind in rowcol flat; do
  OMP_NUM_THREADS=1 python train_prior.py --data data/shapes-train40k --image_tokenizer "$tok" \
    --output_dir "runs/ablate-$kind" --overwrite_output_dir --preset small --max_steps "$steps" --batch_size 32 --learning_rate 1e-3 \
    --warmup_steps 100 --weight_decay 0.1 --text_len 16 --eval_steps "$steps" --checkpointing_steps 0 \
    --image_positions "$kind" --sample_prompts "a small red circle in the top left" --seed 0 > "runs/ablate-$kind.log" 2>&1 &
done
wait
for kind in rowcol flat; do
  python -c "import json,sys; r=json.load(open('runs/ablate-$kind/eval.json')); print(json.dumps({'image_positions': '$kind', 'steps': r['step'], 'val_bits_per_image_token': round(r['val_bits_per_image_token'], 4)}))"
done
