# Shared settings for the TPU VM scripts. Override any of them in the environment.
: "${TPU_NAME:=research-tpu}"
: "${ZONE:=us-central2-b}"
: "${ACCELERATOR_TYPE:=v4-32}"        # v4-8 is one host; v4-32 is 4 hosts (a small pod)
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"
: "${REPO_URL:?set REPO_URL to the git URL of this repository}"
: "${REPO_DIR:=research}"
