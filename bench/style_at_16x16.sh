#!/usr/bin/env bash
# Does a finer grid keep the emoji styles that the bundled 8x8 tokenizer loses (issue 17's style targets)?
#
#   OUT=runs/style16 STEPS=800 THREADS=2 bash bench/style_at_16x16.sh
#
# 1. The emoji recipe's image tokenizer (recipes/tokenizer_emoji_fsq.json: FSQ 8,6,6,5,5, L1 + perceptual)
#    on a 16x16 grid (--widths 64,128: one downsampling fewer), STEPS steps; the best held-out PSNR is kept.
# 2. bench/style_in_codes.py on it: the probe's style accuracy from its codes and from its round trip's
#    mean colours (16x16 cells), and the shipped judges on its round trips.
# 3. The upper bound a judge can reach on each grid's round trips: emoji-styles judges trained on round
#    trips alone (--round_trip_p 1.0), once through the bundled 8x8 tokenizer and once through the 16x16 one.
# 4. What the prior would cost: 20 steps of recipes/prior_emoji.json on each tokenizer's codes (the codes are
#    encoded and cached first), seconds per step from log.jsonl.
# Each step is skipped when its output exists, so a killed run is rerun with the same command. Prints a summary.
set -euo pipefail
out=${OUT:-runs/style16}
steps=${STEPS:-800}
threads=${THREADS:-2}
data=${DATA:-data/emoji-styles}
[ -f "$data/train/metadata.jsonl" ] || minidalle export-dataset emoji-styles --out "$data"
mkdir -p "$out"
tok16="$out/tokenizer/image_tokenizer"

if [ ! -f "$out/tokenizer/run_summary.json" ]; then
    resume=()
    [ -d "$out/tokenizer" ] && resume=(--resume_from_checkpoint latest)
    python train_tokenizer.py --config recipes/tokenizer_emoji_fsq.json --widths 64,128 --data "$data" \
        --output_dir "$out/tokenizer" --threads "$threads" --max_steps "$steps" --eval_steps 200 \
        --checkpointing_steps 100 --image_steps 400 "${resume[@]}"
fi

[ -f "$out/probe16.json" ] || python bench/style_in_codes.py --image_tokenizer "$tok16" --data "$data" \
    --inputs codes,round_trip_thumbnail --epochs 20 --seeds 0 --threads "$threads" --out "$out/probe16.json"

for grid in 8 16; do
    model=emoji
    [ "$grid" = 16 ] && model="$tok16"
    [ -f "$out/judges-rt$grid/judges.json" ] || minidalle train-emoji-judges --data "$data" --round_trip_model "$model" \
        --round_trip_p 1.0 --threads "$threads" --no_progress --out "$out/judges-rt$grid"
done

for grid in 8 16; do
    tok=minidalle/emoji_model/image_tokenizer
    [ "$grid" = 16 ] && tok="$tok16"
    [ -f "$out/prior-timing$grid/run_summary.json" ] || python train_prior.py --config recipes/prior_emoji.json \
        --data "$data" --image_tokenizer "$tok" --max_steps 20 --eval_steps 0 --logging_steps 5 --threads "$threads" \
        --output_dir "$out/prior-timing$grid" --overwrite_output_dir
done

python - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
tok = json.loads((out / "tokenizer/image_tokenizer/training_info.json").read_text())
print(f"16x16 tokenizer: step {tok['step']}, held-out PSNR {tok['eval_psnr_per_image']:.2f} dB (mean of each image's), "
      f"codes used {100 * tok['eval_codebook_usage']:.1f}%")
print((out / "probe16.json").read_text())
for grid in (8, 16):
    rob = json.loads((out / f"judges-rt{grid}/judges.json").read_text())["robustness"]
    cells = [f"{split} style {100 * rob[split]['tokenizer_round_trip']['style']:.1f}%, "
             f"subgroup {100 * rob[split]['tokenizer_round_trip']['subgroup']:.1f}%" for split in ("test", "zeroshot")]
    print(f"judges trained on {grid}x{grid} round trips only, on round trips: " + "; ".join(cells))
for grid in (8, 16):
    times = {r["step"]: r["time"] for r in map(json.loads, (out / f"prior-timing{grid}/log.jsonl").read_text().splitlines())
             if "time" in r}
    print(f"prior on {grid}x{grid} codes (recipes/prior_emoji.json, batch 64): "
          f"{(times[20] - times[5]) / 15:.2f} s a step (steps 6-20; wall time, so alone on the machine)")
EOF
