#!/bin/bash
# Submit the extraction as a job array, then a finalize job that runs once every task has ended
# (afterany: also after failures, so that it reports which parts to rerun).
#
#   ./submit.sh /data/images /shared/cache/images 16
set -euo pipefail
SRC=$1 CACHE=$2 PARTS=${3:-16}
here=$(dirname "$0")
array=$(sbatch --parsable --array=0-$((PARTS - 1)) --export=ALL,SRC="$SRC",CACHE="$CACHE",PARTS="$PARTS" \
        "$here/extract.sbatch")
sbatch --dependency=afterany:"$array" --job-name=featcache-finalize --time=00:30:00 \
       --output=featcache-finalize-%j.log --wrap="featcache-extract '$CACHE' --finalize"
echo "submitted array $array ($PARTS parts); the finalize job's log says whether the cache is complete"
