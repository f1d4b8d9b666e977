#!/bin/bash
# Pretrain an ELMo biLM on a Slurm allocation: one training process per task, across all nodes.
#
#   sbatch slurm/pretrain.sh configs/small.yaml data.dir=data/prepared train.run_dir=runs/small
#
# Every #SBATCH default below can be overridden on the command line (sbatch --nodes=4 --gpus-per-node=8
# --ntasks-per-node=8 slurm/pretrain.sh ...) or by sbatch's input variables (SBATCH_PARTITION,
# SBATCH_ACCOUNT, SBATCH_TIMELIMIT, SBATCH_GPUS_PER_NODE, ...). On GPUs keep one task per GPU:
# --ntasks-per-node equal to --gpus-per-node. On a CPU-only cluster: --gpus-per-node=0 (gloo).
#
# Variables this script reads (all optional):
#   ELMO_DIST_VENV       a virtualenv to activate before training
#   ELMO_DIST            the command that runs the CLI (default: elmo-dist)
#   ELMO_DIST_SRUN_ARGS  extra srun options, e.g. "--cpu-bind=cores"
#
# A thin wrapper: everything else is the same Python code that `elmo-dist submit` runs. Each task
# takes its rank, the rendezvous address and port, its thread count and the job's end time from
# Slurm (elmo_dist.launch.slurm_env). Slurm sends USR2 to every task 120 s before the time limit or
# a preemption (--signal=USR2@120); the tasks checkpoint at the next step boundary, and with
# --requeue the first task requeues the job (elmo_dist.launch.requeue: up to slurm.max_requeues,
# never after a cancel), which resumes from that checkpoint. The trainer also stops by itself
# 300 s (train.deadline_margin_s) before the time limit if no signal comes. Another signal (e.g.
# --signal=USR1@300) needs train.stop_signals=[USR1].
#
#SBATCH --job-name=elmo-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=USR2@120
#SBATCH --requeue

set -euo pipefail

if [ "$#" -lt 1 ]; then
    echo "usage: sbatch slurm/pretrain.sh CONFIG [key=value ...]" >&2
    exit 2
fi
if [ -n "${ELMO_DIST_VENV:-}" ]; then
    # shellcheck disable=SC1091
    source "${ELMO_DIST_VENV}/bin/activate"
fi
echo "elmo-dist: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}: ${SLURM_NTASKS:-1} task(s)"

# The two variables may hold several words; they are split here, once, and quoted from then on.
read -r -a srun_args <<< "${ELMO_DIST_SRUN_ARGS:-}"
read -r -a cli <<< "${ELMO_DIST:-elmo-dist}"
exec srun --kill-on-bad-exit=1 "${srun_args[@]}" "${cli[@]}" pretrain --requeue "$@"
