#!/usr/bin/env bash
# Deletes the TPU VM. Checkpoints and results live in the (gs://) workdir and survive.
# Usage: [DRY_RUN=1] tpu_scripts/teardown.sh
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
gcloud_run compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
