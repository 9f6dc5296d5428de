#!/usr/bin/env bash
# The bundled emoji model (`sample.py --model emoji`): the whole pipeline trained on the emoji-styles
# train split (seven open emoji sets, 64 px; the sets' licences in minidalle/emoji_model/ATTRIBUTION.md).
# Rerun from the repository root:  bash recipes/emoji_styles.sh
# Needs npm (or EMOJI_SOURCE=DIR of the pinned tarballs) for the export. THREADS=N sets torch's threads;
# OUT=DIR the runs' folder; BUNDLE=DIR where the float16 pipeline goes (default: the package's emoji model).
# Wall times and the machine are appended to $OUT/recipe_times.txt.
set -euo pipefail
out=${OUT:-runs/emoji}
data=${DATA:-data/emoji-styles}
threads=${THREADS:-0}
bundle=${BUNDLE:-minidalle/emoji_model}
mkdir -p "$out"
stamp() { echo "$1 $(date -u +%FT%TZ) $(nproc) cores $(uname -m) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >> "$out/recipe_times.txt"; }

stamp start
# The dataset: train / test / zeroshot splits (re-running is idempotent: a finished export is kept)
minidalle export-dataset emoji-styles --out "$data" --resolution 64 ${EMOJI_SOURCE:+--source "$EMOJI_SOURCE"}
stamp export-done

# Stage 1: the image tokenizer, FSQ 8x8 cells of 7,200 codes, L1 + perceptual (the stage-1 comparison's
# choice for the prior: see the README's "Stage 1 on real images"; flags in recipes/tokenizer_emoji_fsq.json)
python train_tokenizer.py --config recipes/tokenizer_emoji_fsq.json --data "$data" --output_dir "$out/tokenizer" \
    --threads "$threads" --overwrite_output_dir
stamp tokenizer-done

# Stage 2: encode once, a BPE text tokenizer on the captions, and the prior (flags in recipes/prior_emoji.json:
# FSQ codes predicted digit by digit; encoded by the tokenizer's weights rounded to float16, the bundle's, so the
# prior learns the codes the bundled tokenizer gives; held-out loss every 200 steps, the best kept, stopped after
# the first evaluation without improvement)
python train_prior.py --config recipes/prior_emoji.json --data "$data" \
    --image_tokenizer "$out/tokenizer/image_tokenizer" --output_dir "$out/prior" --threads "$threads" --overwrite_output_dir
stamp prior-done

# Bundle: float16 weights inside the package; the sets' attribution travels with the pipeline (the trainers copy
# the export's ATTRIBUTION.md). The sampling defaults were chosen on 100 train captions that are not reported
# (run on the float16 export; it kept guidance 3, temperature 0.7: no cell beat them significantly):
#   python bench/eval_emoji_model.py --model "$bundle" --tune --guidance 1.5,3,5 \
#       --temperatures 0.3,0.7,1.0 --write-defaults recipes/emoji_sampling.json
minidalle export-pipeline --source "$out/prior/pipeline" --out "$bundle" --dtype float16 \
    --sampling_defaults recipes/emoji_sampling.json
stamp end
