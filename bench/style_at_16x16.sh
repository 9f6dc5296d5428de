#!/usr/bin/env bash
# Does a finer grid keep the emoji styles that the bundled 8x8 tokenizer loses (issue 17's style targets)?
#
#   OUT=runs/style16 STEPS=800 PRIOR_STEPS=600 THREADS=2 bash bench/style_at_16x16.sh
#
# 1. The emoji recipe's image tokenizer (recipes/tokenizer_emoji_fsq.json: FSQ 8,6,6,5,5, L1 + perceptual)
#    on a 16x16 grid (--widths 64,128: one downsampling fewer), STEPS steps; the best held-out PSNR is kept.
# 2. bench/style_in_codes.py on it: the probe's style accuracy from its codes and from its round trip's
#    mean colours (16x16 cells), and the shipped judges on its round trips.
# 3. The upper bound a judge can reach on each grid's round trips: emoji-styles judges trained on round
#    trips alone (--round_trip_p 1.0), once through the bundled 8x8 tokenizer and once through the 16x16 one.
# 4. What the prior would cost: 20 steps of recipes/prior_emoji.json on each tokenizer's codes (the codes are
#    encoded and cached first), seconds per step from log.jsonl.
# 5. The prior itself: recipes/prior_emoji.json on the 16x16 codes for PRIOR_STEPS steps (its cosine schedule
#    over them), exported to float16 with the bundled model's sampling defaults (recipes/emoji_sampling.json),
#    as recipes/emoji_styles.sh exports the bundle.
# 6. Both models' samples, as issue 17 judges them (bench/eval_emoji_model.py --only samples rank, the caption
#    ranking by style only: 400 train captions and every zero-shot pair, guidance 3, temperature 0.7, best of 8),
#    each judged by the shipped judges and by the judges trained on each grid's round trips (step 3); and a
#    picture ($OUT/zeroshot-8x8-16x16.png): two zero-shot pairs of each style, real image and both models' samples.
# Each step is skipped when its output exists, so a killed run is rerun with the same command. Prints a summary.
set -euo pipefail
out=${OUT:-runs/style16}
steps=${STEPS:-800}
prior_steps=${PRIOR_STEPS:-600}
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

if [ ! -f "$out/prior16/run_summary.json" ]; then
    resume=()
    [ -d "$out/prior16" ] && resume=(--resume_from_checkpoint latest)
    python train_prior.py --config recipes/prior_emoji.json --data "$data" --image_tokenizer "$tok16" \
        --max_steps "$prior_steps" --checkpointing_steps 100 --threads "$threads" --output_dir "$out/prior16" "${resume[@]}"
fi
[ -f "$out/bundle16/model_index.json" ] || minidalle export-pipeline --source "$out/prior16/pipeline" \
    --out "$out/bundle16" --dtype float16 --sampling_defaults recipes/emoji_sampling.json

for grid in 8 16; do
    model=emoji
    [ "$grid" = 16 ] && model="$out/bundle16"
    [ -f "$out/eval$grid/report-rank-samples.json" ] || OMP_NUM_THREADS=$threads python bench/eval_emoji_model.py \
        --model "$model" --data "$data" --only samples rank --rank-concepts 0 --out "$out/eval$grid"
    for judges in shipped rt8 rt16; do
        flags=()
        [ "$judges" = shipped ] || flags=(--judges "$out/judges-$judges")
        for set in train zeroshot; do
            [ -f "$out/eval$grid/judged-$judges-$set.json" ] || minidalle eval-emoji \
                "$out/eval$grid/samples-$set/manifest.jsonl" "${flags[@]}" --json > "$out/eval$grid/judged-$judges-$set.json"
        done
    done
done

python - "$out" "$data" <<'EOF'
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
evals = [json.loads(line) for line in (out / "prior16/log.jsonl").read_text().splitlines() if "val_image_nll" in line]
print("16x16 prior, held-out NLL (nats per image token) by step: "
      + ", ".join(f"{e['step']}: {e['val_image_nll']:.3f}" for e in evals))
for grid in (8, 16):
    report = json.loads((out / f"eval{grid}/report-rank-samples.json").read_text())
    print(f"{grid}x{grid} model ({report['model']}): rank_captions, right style among {report['rank']['styles']} "
          f"on the real zero-shot images {100 * report['rank']['style_among_styles']:.1f}%")
    for judges in ("shipped", "rt8", "rt16"):
        cells = []
        for split in ("train", "zeroshot"):
            r = json.loads((out / f"eval{grid}/judged-{judges}-{split}.json").read_text())
            cells.append(f"{split} style {100 * r['style_accuracy']:.1f}% subgroup {100 * r['subgroup_accuracy']:.1f}%")
        print(f"  samples judged by the {judges} judges: " + "; ".join(cells))

# the picture: two zero-shot pairs of each style (prompts in the sets' order): the real image, the 8x8 model's
# sample, the 16x16 model's
from collections import Counter  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from minidalle.data.emoji_styles.export import caption, parse_caption  # noqa: E402
from minidalle.data.imagefolder import manifest_entries  # noqa: E402
from minidalle.images import save_image_grid  # noqa: E402

data = Path(sys.argv[2])
real = {}
for line in (data / "zeroshot/metadata.jsonl").read_text().splitlines():
    row = json.loads(line)
    real.setdefault((row["concept"], row["style"]), data / "zeroshot" / row["file_name"])
samples = {grid: list(manifest_entries(out / f"eval{grid}/samples-zeroshot/manifest.jsonl", parse_caption))
           for grid in (8, 16)}
pairs = [pair for _, pair, _ in samples[8]]
assert pairs == [pair for _, pair, _ in samples[16]]
seen, chosen = Counter(), []
for i, (_, style) in enumerate(pairs):
    seen[style] += 1
    if seen[style] <= 2:
        chosen.append(i)
chosen.sort(key=lambda i: pairs[i][1])


def tensor(path):
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


rows = [torch.stack([tensor(real[pairs[i]]) for i in chosen])]
rows += [torch.stack([tensor(samples[grid][i][2]) for i in chosen]) for grid in (8, 16)]
picture = save_image_grid(rows, out / "zeroshot-8x8-16x16.png", labels=["real", "8x8", "16x16"])
print(f"{picture}: zero-shot pairs, " + "; ".join(caption(*pairs[i]) for i in chosen))
EOF
