#!/usr/bin/env bash
# Every figure of the README's "Generation: the bundled model" section for one shapes pipeline, in one run:
#   bash bench/judge_shapes_model.sh [MODEL] [OUT]     (MODEL: a pipeline folder or a bundled name; default shapes)
# writes OUT/ceiling.jsonl (the tokenizer's round trip of true scenes), OUT/eval.jsonl (sample.py's defaults on
# 400 train-grammar and 400 zero-shot prompts, judged exactly; rank_captions last), OUT/speed.jsonl (one thread)
# and OUT/times.txt (each step's wall time, the machine). NUM=N judges N prompts per set instead of 400.
set -euo pipefail
model=${1:-shapes}
out=${2:-runs/judge-$(basename "$model")}
num=${NUM:-400}
mkdir -p "$out"
stamp() { echo "$1 $(date -u +%FT%TZ) $(getconf _NPROCESSORS_ONLN) cores $(uname -m) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" >> "$out/times.txt"; }
stamp start
python bench/zeroshot_ceiling.py --model "$model" --num "$num" > "$out/ceiling.jsonl"
stamp ceiling
python bench/eval_shapes_model.py --model "$model" --num-prompts "$num" --num-rank "$((num / 2))" --no-guidance-off \
    --out "$out/samples" > "$out/eval.jsonl"
stamp eval
python bench/sampling_speed.py --model "$model" --threads 1 > "$out/speed.jsonl"
stamp end
cat "$out/ceiling.jsonl" "$out/eval.jsonl" "$out/speed.jsonl"
