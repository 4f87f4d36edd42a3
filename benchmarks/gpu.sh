#!/usr/bin/env bash
# BENCHMARKS.md's GPU rows on one GPU host, in one go (a borrowed machine's time is short):
#   1. the sleep2vec dense train step at batch 128 x 120 epochs, pair-first, bf16 (`bench step`):
#      as configured (with a 3-step device profile), and with the float32 residual stream the
#      presets had before (the bf16 stream's measured effect);
#   2. the SleepLM-Base train step at 128 epochs (batch 64 x 2), as configured;
#   3. an end-to-end `train` at the dense shape on prepared synthetic data (MFU, epochs/s, data
#      wait).
# Then one table. Run from the checkout root with a Python that imports sleepjax:
#   benchmarks/gpu.sh OUT_DIR [TRAIN_STEPS]          (PYTHON=python3 by default)
#   MODE=check benchmarks/gpu.sh OUT_DIR              only validates every command's config flags
#   MODE=table benchmarks/gpu.sh OUT_DIR              only prints the table of an earlier run
# A failing part is reported and the rest still runs.
set -uo pipefail
out=${1:?usage: benchmarks/gpu.sh OUT_DIR [TRAIN_STEPS]}
steps=${2:-200}
py=${PYTHON:-python3}
mode=${MODE:-run}
cores=$(nproc)
mkdir -p "$out"

dense=(--config=configs/sleep2vec.py:dense --config.data.global_batch=128)
cohort=(--config.synthetic.n_subjects=24 --config.synthetic.hours=8
        --config.synthetic.workers=$((cores > 1 ? cores - 1 : 1)) --config.prep.workers=$cores)
train=(--config.train.steps=$steps --config.train.log_every=50 --config.train.checkpoint_every=$steps
       --config.data.read_threads=$((cores > 8 ? 8 : cores)))

part() {  # name, timeout (s), sleepjax command and flags
  local name=$1 limit=$2; shift 2
  [[ $mode == table ]] && return
  if [[ $mode == check ]]; then  # the command's config flags, through the config parser
    local flags=() a
    for a in "$@"; do [[ $a == --config* ]] && flags+=("$a"); done
    "$py" -m sleepjax config "${flags[@]}" > /dev/null || { echo "CHECK $name: bad flags"; exit 1; }
    return
  fi
  echo "$(date +%T) $name"
  timeout "$limit" "$py" -m sleepjax "$@" > "$out/$name.log" 2>&1 ||
      echo "$name failed (exit $?): $out/$name.log"
}

part step_default 300 bench step "${dense[@]}" --workdir="$out/step_default" --profile_steps=3
part step_residual_f32 300 bench step "${dense[@]}" --workdir="$out/step_residual_f32" \
    --config.model.residual_dtype=float32
part step_sleeplm_base 400 bench step --config=configs/sleeplm.py:base --config.data.global_batch=64 \
    --workdir="$out/step_sleeplm_base"
part e2e_synth 300 synth "${dense[@]}" "${cohort[@]}" --workdir="$out/e2e"
part e2e_prep 300 prep "${dense[@]}" "${cohort[@]}" --workdir="$out/e2e"
part e2e_train 600 train "${dense[@]}" "${train[@]}" --workdir="$out/e2e"
[[ $mode == check ]] && { echo "CHECK: every command's flags parse"; exit 0; }

"$py" - "$out" <<'EOF'
import glob, json, os, re, sys
out = sys.argv[1]
print(f"\n{'run':<22}{'step ms':>9}{'MFU %':>8}{'GiB/dev':>9}{'epochs/s':>10}{'data wait':>11}")
for path in sorted(glob.glob(os.path.join(out, "step_*", "bench", "step.json"))):
  r = json.load(open(path))
  mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}"
  print(f"{path.split(os.sep)[-3]:<22}{1e3 * r['step_seconds']:>9.1f}{mfu:>8}"
        f"{r['bytes_per_device'] / 2**30:>9.1f}{'':>10}{'':>11}  {r['device_kind']}")
log = os.path.join(out, "e2e_train.log")
lines = [l for l in open(log, errors="replace") if "steps_per_s=" in l] if os.path.exists(log) else []
if lines:  # the last interval's means: compilation and warm-up are in the earlier ones
  m = dict(re.findall(r"([\w/]+)=([^,\s]+)", lines[-1]))
  ms = 1e3 / float(m["steps_per_s"])
  mfu = f"{100 * float(m['mfu']):.1f}" if "mfu" in m else "-"
  print(f"{'e2e_train':<22}{ms:>9.1f}{mfu:>8}{'':>9}{float(m['sleep_epochs_per_s']):>10.0f}"
        f"{100 * float(m['data_wait_frac']):>10.1f}%")
else:
  print("e2e_train: no metrics logged (see e2e_train.log)")
EOF
