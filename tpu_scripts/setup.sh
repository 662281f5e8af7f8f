#!/usr/bin/env bash
# Clones the repo and installs it, with TPU jax and Cloud Storage support, on every host.
# Usage: REPO_URL=https://... [DRY_RUN=1] tpu_scripts/setup.sh
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
: "${REPO_URL:?set REPO_URL to the git URL of this repository}"
repo_dir=$(printf %q "$REPO_DIR")
on_all_workers "set -e; [ -d $repo_dir ] || git clone $(printf %q "$REPO_URL") $repo_dir; \
cd $repo_dir && git pull --ff-only && python3 -m venv .venv && \
.venv/bin/pip install -q -c constraints.txt -e '.[gcs]' 'jax[tpu]' \
-f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
