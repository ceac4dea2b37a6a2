#!/bin/bash
# Convert a library of clips on a Slurm cluster: one array task per shard. matteflow reads
# SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT itself. Inputs and outputs are on a
# shared filesystem. Requeued or re-run tasks skip outputs already recorded complete, so retries are safe.
#
#   sbatch examples/slurm/matteflow-array.sh /shared/footage /shared/matted
#
#SBATCH --job-name=matteflow
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=matteflow-%A_%a.log
set -euo pipefail
IN="${1:?input folder}"
OUT="${2:?output folder}"
srun matteflow batch "$IN" --output "$OUT" --format prores --model birefnet-lite --device cuda \
  --report-json "$OUT/report-$SLURM_ARRAY_TASK_ID.json" --report-csv "$OUT/report-$SLURM_ARRAY_TASK_ID.csv"
