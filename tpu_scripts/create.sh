#!/usr/bin/env bash
# Creates the TPU VM (all hosts of a pod slice). Usage: REPO_URL=... tpu_scripts/create.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
  --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "$@"
