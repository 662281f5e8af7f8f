# Shared settings for the TPU VM scripts; override any of them in the environment.
# DRY_RUN=1 prints every gcloud command (shell-quoted, one per line) instead of running it.
# shellcheck shell=bash
: "${TPU_NAME:=research-tpu}"
: "${ACCELERATOR_TYPE:=v4-32}"  # v4-8: one host; v4-32: 4 hosts; v5e-16 (= v5litepod-16): 4 hosts
: "${REPO_DIR:=research}"       # the checkout's directory on each host
: "${DRY_RUN:=0}"

fail() { echo "error: $*" >&2; exit 2; }

# Hosts (workers) per slice, and the defaults each generation needs. v4-N counts
# TensorCores (2 per chip, 4 chips per host); v5e-N counts chips (up to 8 on one host,
# 4 per host in larger slices).
size="${ACCELERATOR_TYPE##*-}"
[[ "$size" =~ ^[1-9][0-9]*$ ]] || fail "ACCELERATOR_TYPE=$ACCELERATOR_TYPE: expected v4-N or v5e-N (v5litepod-N), e.g. v4-8, v4-32, v5e-16."
case "$ACCELERATOR_TYPE" in
  v4-*)
    (( size % 8 == 0 )) || fail "ACCELERATOR_TYPE=$ACCELERATOR_TYPE: v4 slices are v4-8, v4-16, v4-32, ... (multiples of 8 TensorCores)."
    WORKERS=$(( size / 8 ))
    GCLOUD_ACCELERATOR="$ACCELERATOR_TYPE"
    : "${ZONE:=us-central2-b}"
    : "${RUNTIME_VERSION:=tpu-ubuntu2204-base}" ;;
  v5e-*|v5litepod-*)
    case "$size" in
      1|4|8) WORKERS=1 ;;
      16|32|64|128|256) WORKERS=$(( size / 4 )) ;;
      *) fail "ACCELERATOR_TYPE=$ACCELERATOR_TYPE: v5e slices have 1, 4, 8, 16, 32, 64, 128 or 256 chips." ;;
    esac
    GCLOUD_ACCELERATOR="v5litepod-$size"
    : "${ZONE:=us-west4-a}"
    : "${RUNTIME_VERSION:=v2-alpha-tpuv5-lite}" ;;
  *) fail "ACCELERATOR_TYPE=$ACCELERATOR_TYPE is not supported: use v4-N (v4-8, v4-32, ...) or v5e-N (v5e-16, ...)." ;;
esac
export WORKERS GCLOUD_ACCELERATOR ZONE RUNTIME_VERSION

# Runs gcloud, or prints the command when DRY_RUN=1.
gcloud_run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf 'gcloud'
    printf ' %q' "$@"
    printf '\n'
  else
    gcloud "$@"
  fi
}

# Runs one shell command on every host of the slice at once (`--worker=all`).
on_all_workers() {
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# $ACCELERATOR_TYPE: the same command on all $WORKERS worker(s)"
  fi
  gcloud_run compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}
