#!/usr/bin/env bash
# A Ray job: sweep, then collect (retrain the best configurations with several seeds, blend,
# export the ensemble), then the HTML report, on the cluster the job runs in. Submit it from the
# repository root so the code and the sweep files travel with it:
#
#   RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
#       -- bash launch/submit_sweep.sh --name gpu1 --config search_spaces/sweeps/gpu.yaml \
#       --storage s3://BUCKET/moa-tune
#
# Options (all but --name and --storage have defaults):
#   --name NAME        the sweep's name: its folder RESULTS/NAME and its prefix STORAGE/NAME
#   --config FILE      sweep file, relative to the repository root
#                      [default: search_spaces/sweeps/default.yaml]
#   --data DIR|URI     lish-moa directory on the head node, or an s3://, gs:// URI copied there
#                      first [default: what the sweep file names]
#   --storage URI      where Ray Tune keeps the experiments: s3://..., gs://..., or a folder every
#                      node mounts (trials on other machines cannot write to the head's disk);
#                      with a URI the finished sweep folder is copied to URI/NAME too, so
#                      URI/NAME/ensemble is the export
#   --results DIR      parent of the sweep folder on the head node [default: ~/moa-tune-results];
#                      outside the job's working directory, which Ray may delete
#   --resume           resume the interrupted sweep RESULTS/NAME (same --storage as before)
#
# The top-k and the seeds of the collector come from the sweep file (collect.top_k, seeds).
# moa-tune's dependencies must be installed on every node (launch/aws.yaml, launch/gcp.yaml and
# the KubeRay image do that); the moa_tune code itself comes with --working-dir.
set -euo pipefail

NAME=""
CONFIG="search_spaces/sweeps/default.yaml"
DATA=""
STORAGE=""
RESULTS="$HOME/moa-tune-results"
RESUME=""

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --storage) STORAGE="$2"; shift 2 ;;
    --results) RESULTS="$2"; shift 2 ;;
    --resume) RESUME=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "submit_sweep.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "$NAME" || -z "$STORAGE" ]]; then
  echo "submit_sweep.sh: --name NAME and --storage URI are required (see --help)" >&2
  exit 2
fi

mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
if [[ "$STORAGE" != *://* ]]; then
  mkdir -p "$STORAGE"
  STORAGE="$(cd "$STORAGE" && pwd)"  # Tune needs an absolute storage path
fi
SWEEP_DIR="$RESULTS/$NAME"

# The job's working directory is on PYTHONPATH (Ray puts it first), so this checkout's moa_tune is
# the one imported everywhere; without a moa-tune command on the head, run the module instead.
if ! command -v moa-tune >/dev/null 2>&1; then
  mkdir -p .job-bin
  printf '#!/bin/sh\nexec python -m moa_tune.cli "$@"\n' > .job-bin/moa-tune
  chmod +x .job-bin/moa-tune
  export PATH="$PWD/.job-bin:$PATH"
fi

copy() {  # copy a folder between local paths and s3:// / gs:// URIs (pyarrow comes with Ray Tune)
  case "$2" in  # a local destination must exist
    file://*) mkdir -p "${2#file://}" ;;
    *://*) ;;
    *) mkdir -p "$2" ;;
  esac
  python -c 'import sys; from pyarrow import fs; fs.copy_files(sys.argv[1], sys.argv[2])' "$1" "$2"
}

DATA_DIR=""
if [[ "$DATA" == *://* ]]; then
  DATA_DIR="$RESULTS/_data/$NAME"
  echo "copying $DATA to $DATA_DIR"
  copy "$DATA" "$DATA_DIR"
elif [[ -n "$DATA" ]]; then
  DATA_DIR="$(cd "$DATA" && pwd)"
fi

echo "sweep $NAME: results $SWEEP_DIR, experiments $STORAGE/$NAME"
if [[ -n "$RESUME" ]]; then
  moa-tune sweep --resume "$SWEEP_DIR" --address auto --storage "$STORAGE"
elif [[ -n "$DATA_DIR" ]]; then
  moa-tune sweep --config "$CONFIG" --name "$NAME" --data "$DATA_DIR" --results "$RESULTS" \
    --address auto --storage "$STORAGE"
else
  moa-tune sweep --config "$CONFIG" --name "$NAME" --results "$RESULTS" --address auto --storage "$STORAGE"
fi

moa-tune collect "$SWEEP_DIR" --address auto
moa-tune report "$SWEEP_DIR"
moa-tune status "$SWEEP_DIR"

if [[ "$STORAGE" == *://* ]]; then
  # Next to the Tune experiments already there: STORAGE/NAME becomes the whole sweep folder
  # (sweep.yaml, trials.csv, done.json + best/ per experiment, collect/, ensemble/, report.html).
  echo "copying $SWEEP_DIR to $STORAGE/$NAME"
  copy "$SWEEP_DIR" "$STORAGE/$NAME"
fi
echo "done: ensemble in $SWEEP_DIR/ensemble$([[ "$STORAGE" == *://* ]] && echo " and $STORAGE/$NAME/ensemble")"
