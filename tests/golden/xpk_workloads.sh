#!/bin/bash
# Sweep /shared/sweeps/smoke: 3 runs, one xpk workload per run on cluster my-cluster (v5p-32 x 1).
# Written by `sleepjax sweep --runner=xpk`; edit freely, then run: bash /shared/sweeps/smoke/xpk/workloads.sh
# Kueue queues the workloads; `xpk workload list --cluster my-cluster` shows them. Resubmitting a
# run's workload after it was preempted or deleted resumes it from its checkpoints.
set -euo pipefail

# xs-m2
xpk workload create \
  --cluster=my-cluster --project=my-project --zone=us-central2-b \
  --workload=sweep-000 \
  --tpu-type=v5p-32 --num-slices=1 \
  --base-docker-image=python:3.11 --script-dir=/home/me/sleepjax --priority=medium --max-restarts=3 \
  --command='pip install -q -e ".[tpu]" && sleepjax sweep-run --config=/shared/sweeps/smoke/runs/xs-m2/config.py --workdir=/shared/sweeps/smoke/runs/xs-m2'

# xs-m3
xpk workload create \
  --cluster=my-cluster --project=my-project --zone=us-central2-b \
  --workload=sweep-001 \
  --tpu-type=v5p-32 --num-slices=1 \
  --base-docker-image=python:3.11 --script-dir=/home/me/sleepjax --priority=medium --max-restarts=3 \
  --command='pip install -q -e ".[tpu]" && sleepjax sweep-run --config=/shared/sweeps/smoke/runs/xs-m3/config.py --workdir=/shared/sweeps/smoke/runs/xs-m3'

# s-m2
xpk workload create \
  --cluster=my-cluster --project=my-project --zone=us-central2-b \
  --workload=sweep-002 \
  --tpu-type=v5p-32 --num-slices=1 \
  --base-docker-image=python:3.11 --script-dir=/home/me/sleepjax --priority=medium --max-restarts=3 \
  --command='pip install -q -e ".[tpu]" && sleepjax sweep-run --config=/shared/sweeps/smoke/runs/s-m2/config.py --workdir=/shared/sweeps/smoke/runs/s-m2'
