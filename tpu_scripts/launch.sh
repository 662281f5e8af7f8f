#!/usr/bin/env bash
# Runs the same training command on every host at once (multi-host: one process per host).
# jax.distributed.initialize() finds the coordinator itself on TPU (distributed.auto=True).
# Usage: tpu_scripts/launch.sh configs/mnist1d/transformer.py gs://BUCKET/runs/exp1 [--config.X=Y ...]
# A preempted run exits with code 75 after saving; launching again resumes it.
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG="$1"; WORKDIR="$2"; shift 2
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  cd $REPO_DIR && .venv/bin/python -m research.main --config=$CONFIG --workdir=$WORKDIR \
    --config.distributed.auto=True --config.mesh.data=-1 $*
"
