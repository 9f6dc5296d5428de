#!/usr/bin/env bash
# The README's OpenMoji fine-tune vs from-scratch comparison (after recipes/emoji_styles.sh and the OpenMoji export);
# then: python bench/eval_emoji_model.py --model runs/emoji-ft/{finetuned,scratch}/pipeline --data data/emoji-openmoji \
#   --num-train 0 --num-candidates 8 --only test_samples likelihood sheet --out runs/eval-ft-{finetuned,scratch}
set -e
common="--data data/emoji-openmoji --max_examples 500 --eval_split test --max_steps 250 --batch_size 32 --warmup_steps 25 --eval_steps 50 --checkpointing_steps 250 --image_steps 0 --threads 1 --mixed_precision auto --seed 0 --overwrite_output_dir"
python train_prior.py $common --init_from runs/emoji/prior/pipeline --learning_rate 3e-4 --output_dir runs/emoji-ft/finetuned
python train_prior.py $common --config recipes/prior_emoji.json --image_tokenizer runs/emoji/tokenizer/image_tokenizer --learning_rate 1e-3 --output_dir runs/emoji-ft/scratch
