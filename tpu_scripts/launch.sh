#!/usr/bin/env bash
# Runs the same training command on every host at once (one process per host);
# jax.distributed.initialize() finds the coordinator itself (distributed.auto=True).
# Usage: [DRY_RUN=1] tpu_scripts/launch.sh CONFIG WORKDIR [--config.X=Y ...]
#   e.g. tpu_scripts/launch.sh configs/mnist1d/transformer.py gs://BUCKET/runs/exp1
# A preempted run exits with code 75 after saving; launching again resumes it.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
(( $# >= 2 )) || fail "usage: tpu_scripts/launch.sh CONFIG WORKDIR [--config.X=Y ...]"
CONFIG="$1"; WORKDIR="$2"; shift 2
# Every host writes its part of each checkpoint: on several hosts the workdir must be one
# place they all reach, a bucket. Local disks would each hold a piece no host can restore.
if (( WORKERS > 1 )) && [[ "$WORKDIR" != gs://* ]]; then
  fail "WORKDIR=$WORKDIR: $ACCELERATOR_TYPE has $WORKERS hosts, so the workdir must be a gs://BUCKET/path that all of them write."
fi
command="cd $(printf %q "$REPO_DIR") && .venv/bin/python -m research.main"
command+=" --config=$(printf %q "$CONFIG") --workdir=$(printf %q "$WORKDIR")"
command+=" --config.distributed.auto=True --config.mesh.data=-1"
for arg in "$@"; do
  command+=" $(printf %q "$arg")"
done
on_all_workers "$command"
