#!/bin/bash
# Submit an array and its dependent job in one go; prints both job IDs.
#
#   ./submit.sh segment N OUTDIR INPUT [INPUT ...] [segment options]   # N shards + merge-reports (afterany)
#   ./submit.sh train-cv K PREPARED CVDIR [train-cv options]           # folds 0..K-1 + evaluate-oof (afterok)
#
# sbatch reads its usual variables (SBATCH_PARTITION, SBATCH_TIMELIMIT, SBATCH_ACCOUNT, SBATCH_MEM_PER_NODE, ...),
# and SBATCH_OPTIONS here adds any other option to every job (e.g. "--cpus-per-task=2 --qos=short"), so a cluster
# needs no edit of this file; the .sbatch files hold the per-job resources.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
usage() {
    echo "usage: submit.sh segment N OUTDIR INPUT [...] [options] | submit.sh train-cv K PREPARED CVDIR [options]" >&2
    exit 2
}
[ $# -ge 4 ] || usage
WHAT=$1
N=$2
shift 2
case "$N" in '' | *[!0-9]* | 0) echo "submit.sh: N must be a whole number >= 1, got '$N'" >&2; exit 2 ;; esac
case "$WHAT" in
segment)
    OUTDIR=$1
    shift
    ARRAY=$(NUM_SHARDS=$N sbatch --parsable ${SBATCH_OPTIONS:-} --array="0-$((N - 1))" "$HERE/segment_array.sbatch" "$OUTDIR" "$@")
    ARRAY=${ARRAY%%;*}
    NEXT=$(sbatch --parsable ${SBATCH_OPTIONS:-} --dependency="afterany:$ARRAY" "$HERE/merge_reports.sbatch" "$OUTDIR")
    echo "segment array: $ARRAY (shards 0-$((N - 1)) of $N); merge-reports: ${NEXT%%;*}"
    ;;
train-cv)
    PREPARED=$1
    CVDIR=$2
    shift 2
    ARRAY=$(sbatch --parsable ${SBATCH_OPTIONS:-} --array="0-$((N - 1))" "$HERE/train_cv_array.sbatch" "$PREPARED" "$CVDIR" "$@")
    ARRAY=${ARRAY%%;*}
    NEXT=$(sbatch --parsable ${SBATCH_OPTIONS:-} --dependency="afterok:$ARRAY" "$HERE/evaluate_oof.sbatch" "$CVDIR" "$PREPARED")
    echo "train-cv array: $ARRAY (folds 0-$((N - 1))); evaluate-oof: ${NEXT%%;*}"
    ;;
*) usage ;;
esac
