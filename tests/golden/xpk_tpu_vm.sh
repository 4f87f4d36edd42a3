#!/bin/bash
# Sweep /shared/sweeps/smoke: 3 runs, one after another on the TPU VM slice sleepjax-v5p, every worker at once.
# Written by `sleepjax sweep --runner=xpk`; edit freely, then run: bash /shared/sweeps/smoke/xpk/tpu_vm.sh
# Finished runs are skipped and started ones resume, so run it again after a preemption.
set -euo pipefail

while read -r RUN; do
  echo "== $RUN"
  gcloud compute tpus tpu-vm ssh sleepjax-v5p --project=my-project --zone=us-central2-b \
    --worker=all --command="cd ~/sleepjax && source .venv/bin/activate && sleepjax sweep-run --config=$RUN/config.py --workdir=$RUN" < /dev/null  # ssh must not eat runs.txt
done < /shared/sweeps/smoke/runs.txt
