#!/usr/bin/env bash
# Creates the TPU VM (all hosts of the slice).
# Usage: [ACCELERATOR_TYPE=v4-32] [DRY_RUN=1] tpu_scripts/create.sh [extra gcloud flags]
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
gcloud_run compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
  --accelerator-type="$GCLOUD_ACCELERATOR" --version="$RUNTIME_VERSION" "$@"
