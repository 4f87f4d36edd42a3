#!/bin/bash
# Sweep /shared/sweeps/smoke: 3 runs, one xpk workload per run on cluster my-cluster (v5p-32 x 1).
# Written by `sleepjax sweep --runner=xpk`; edit freely, then run: bash /shared/sweeps/smoke/xpk/workloads.sh
# Kueue queues the workloads; `xpk workload list --cluster my-cluster` shows them. Resubmitting a
# run's workload after it was preempted or deleted resumes it from its checkpoints.
set -euo pipefail

# one image for every workload: the checkout's code on the pinned dependencies
IMAGE=gcr.io/my-project/sleepjax:sweep-4a15fc
docker build --build-arg BASE=python:3.11 -f /home/me/sleepjax/launch/Dockerfile -t "$IMAGE" /home/me/sleepjax
docker push "$IMAGE"

# xs-m2
xpk workload create \
  --cluster=my-cluster --project=my-project --zone=us-central2-b \
  --workload=smoke-4a15fc-000 \
  --tpu-type=v5p-32 --num-slices=1 \
  --docker-image="$IMAGE" --priority=medium --max-restarts=20 \
  --termination-grace-period-seconds=300 \
  --command='SLEEPJAX_JOB_ID=smoke-4a15fc-000 sleepjax sweep-run --config=/shared/sweeps/smoke/runs/xs-m2/config.json --workdir=/shared/sweeps/smoke/runs/xs-m2 && { test -e /shared/sweeps/smoke/runs/xs-m2/result.json || exit 42; }'

# xs-m3
xpk workload create \
  --cluster=my-cluster --project=my-project --zone=us-central2-b \
  --workload=smoke-4a15fc-001 \
  --tpu-type=v5p-32 --num-slices=1 \
  --docker-image="$IMAGE" --priority=medium --max-restarts=20 \
  --termination-grace-period-seconds=300 \
  --command='SLEEPJAX_JOB_ID=smoke-4a15fc-001 sleepjax sweep-run --config=/shared/sweeps/smoke/runs/xs-m3/config.json --workdir=/shared/sweeps/smoke/runs/xs-m3 && { test -e /shared/sweeps/smoke/runs/xs-m3/result.json || exit 42; }'

# s-m2
xpk workload create \
  --cluster=my-cluster --project=my-project --zone=us-central2-b \
  --workload=smoke-4a15fc-002 \
  --tpu-type=v5p-32 --num-slices=1 \
  --docker-image="$IMAGE" --priority=medium --max-restarts=20 \
  --termination-grace-period-seconds=300 \
  --command='SLEEPJAX_JOB_ID=smoke-4a15fc-002 sleepjax sweep-run --config=/shared/sweeps/smoke/runs/s-m2/config.json --workdir=/shared/sweeps/smoke/runs/s-m2 && { test -e /shared/sweeps/smoke/runs/s-m2/result.json || exit 42; }'
