#!/usr/bin/env bash
# One recipe row of BENCHMARKS.md "Self-supervised benchmark (issue 23)": pretrain on the data
# prepared once in $DATA with $CONFIG and the given overrides for each seed, then the probes
# (in-site, held-out site) and the representation audit of that checkpoint; then the row's table
# over seeds. Run from the checkout root:
#   benchmarks/ssl_recipe.sh OUT NAME "0 1 2" [--config.<key>=<value> ...]
#   CONFIG=configs/smoke.py:hard (default; the 24-subject rows), DATA=runs/hard/data (default;
#     `sleepjax synth` + `sleepjax prep` with that config)
#   CONFIG=configs/ssl.py DATA=W/ssl/data: rows on the full-size recipe (`sleepjax bench ssl`'s data)
set -euo pipefail
out=${1:?usage: benchmarks/ssl_recipe.sh OUT NAME SEEDS [overrides]}
name=${2:?}; seeds=${3:?}; shift 3
py=${PYTHON:-python3}
config=${CONFIG:-configs/smoke.py:hard}
data=$(realpath "${DATA:-runs/hard/data}")
dirs=()
for seed in $seeds; do
  w="$out/$name-s$seed"
  dirs+=("$w")
  [[ -f $w/eval/report.json ]] && continue
  c=(--config="$config" --config.seed="$seed" --config.data.dir="$data" "$@")
  "$py" -m sleepjax train "${c[@]}" --workdir="$w"
  "$py" -m sleepjax eval "${c[@]}" --workdir="$w" \
      --config.eval.tasks="('few_shot','site','audit')"
done
"$py" -m sleepjax.bench.ssl "${dirs[@]}"
