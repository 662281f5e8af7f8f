#!/usr/bin/env bash
# Clones the repo and installs it with TPU jax on every host of the slice.
set -euo pipefail
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e
  [ -d $REPO_DIR ] || git clone $REPO_URL $REPO_DIR
  cd $REPO_DIR && git pull --ff-only
  python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . 'jax[tpu]' \
    -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
"
