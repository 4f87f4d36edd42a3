#!/bin/bash
# Sweep /shared/sweeps/smoke: 3 runs, one after another on the TPU VM slice sleepjax-v5p, every worker at once.
# Written by `sleepjax sweep --runner=xpk`; edit freely, then run (it survives a closed terminal):
#   nohup bash /shared/sweeps/smoke/xpk/tpu_vm.sh > tpu_vm.log 2>&1 &
# Finished runs are skipped and started ones resume, so run it again after a preemption; a failed
# run does not stop the others (they are listed at the end).
set -uo pipefail
trap '' HUP  # a dropped ssh session to this machine must not kill the sweep

RUNS=(
  /shared/sweeps/smoke/runs/xs-m2
  /shared/sweeps/smoke/runs/xs-m3
  /shared/sweeps/smoke/runs/s-m2
)
FAILED=()
for RUN in "${RUNS[@]}"; do
  echo "== $RUN"
  if ! gcloud compute tpus tpu-vm ssh sleepjax-v5p --project=my-project --zone=us-central2-b \
      --worker=all --command="cd ~/sleepjax && source .venv/bin/activate && sleepjax sweep-run --config=$RUN/config.json --workdir=$RUN" < /dev/null; then
    echo "== $RUN failed; going on with the next run" >&2
    FAILED+=("$RUN")
  fi
done
if [ "${#FAILED[@]}" -gt 0 ]; then
  printf "failed: %s\n" "${FAILED[@]}" >&2
  exit 1
fi
