#!/bin/bash
# Fine-tune the classifier variants on a pretrained biLM: one process per task, data parallel across
# the tasks (one per GPU), the same result as one process with the same train.batch_size.
#
#   sbatch slurm/finetune.sh configs/finetune.yaml bilm.path=runs/small data.train=data/agnews/train.csv
#
# As a job array, one task per entry of the config's `variants` (task i trains variants[i] in
# RUN_DIR/<variant>), started only once pretraining has succeeded:
#
#   pre=$(sbatch --parsable slurm/pretrain.sh configs/small.yaml train.run_dir=runs/small)
#   sbatch --array=0-3 --dependency=afterok:${pre} slurm/finetune.sh configs/finetune.yaml bilm.path=runs/small
#
# Override the #SBATCH defaults with sbatch options or SBATCH_* variables, as for pretrain.sh.
# Variables read (optional): ELMO_DIST_VENV (a virtualenv to activate), ELMO_DIST (the CLI command).
# Fine-tuning is short and restarts from the cached layers, so a preempted task is simply requeued.
#
#SBATCH --job-name=elmo-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue

set -uo pipefail

if [ "$#" -lt 1 ]; then
    echo "usage: sbatch [--array=0-N] slurm/finetune.sh CONFIG [key=value ...]" >&2
    exit 2
fi
if [ -n "${ELMO_DIST_VENV:-}" ]; then
    # shellcheck disable=SC1091
    source "${ELMO_DIST_VENV}/bin/activate"
fi

variant=()
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    variant=(--variant "${SLURM_ARRAY_TASK_ID}")
fi
echo "elmo-dist: job ${SLURM_JOB_ID} on ${SLURM_JOB_NODELIST}${SLURM_ARRAY_TASK_ID:+, array task ${SLURM_ARRAY_TASK_ID}}"
# srun starts one `elmo-dist finetune` per task; each takes its rank, the rendezvous (the first node, a
# port from the job id) and its thread count from Slurm (elmo_dist.launch.slurm_env)
read -r -a cli <<< "${ELMO_DIST:-elmo-dist}"
exec srun --kill-on-bad-exit=1 "${cli[@]}" finetune "$@" "${variant[@]}"
