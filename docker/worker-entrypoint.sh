#!/usr/bin/env bash
# Start a reasonlab Prefect worker: `prefect worker start --pool $POOL` from the installed checkout.
#   PREFECT_API_URL  the server, e.g. http://prefect.internal:4200/api (required)
#   POOL             work pool to serve: gpu | cpu (default: gpu)
#   WORKER_NAME      worker name (default: prefect picks one)
#   WORKER_LIMIT     max concurrent flow runs of this worker (default: unlimited)
#   REASONLAB_DIR    the checkout (default /opt/reasonlab)
# Extra options (--...) go to `prefect worker start`. A command instead (docker/kubernetes work pools
# start each flow run as `prefect flow-run execute ...` in this image) runs as is, in the checkout.
set -euo pipefail

cd "${REASONLAB_DIR:-/opt/reasonlab}"
if [[ $# -gt 0 && "$1" != -* ]]; then exec "$@"; fi

: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server, e.g. http://prefect:4200/api}"
POOL="${POOL:-gpu}"
args=(worker start --pool "$POOL" --type process)
if [[ -n "${WORKER_NAME:-}" ]]; then args+=(--name "$WORKER_NAME"); fi
if [[ -n "${WORKER_LIMIT:-}" ]]; then args+=(--limit "$WORKER_LIMIT"); fi
exec .venv/bin/prefect "${args[@]}" "$@"
