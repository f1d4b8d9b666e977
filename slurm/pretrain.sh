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
#   MASTER_PORT          rendezvous port (default: 15000 + job id mod 20000)
#
# Preemption and time limits: Slurm signals this script (USR2, --signal=B:USR2@120) before it ends
# the job. The script forwards the signal to every training process; they checkpoint at the next step
# boundary and exit with status 75; the script then requeues the job, and the requeued job resumes
# from that checkpoint. The trainer also stops by itself 300 s (train.deadline_margin_s) before the time
# limit if no signal comes. A different signal (e.g. --signal=B:USR1@300) needs train.stop_signals=[USR1].
#
#SBATCH --job-name=elmo-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR2@120
#SBATCH --requeue

set -uo pipefail

if [ "$#" -lt 1 ]; then
    echo "usage: sbatch slurm/pretrain.sh CONFIG [key=value ...]" >&2
    exit 2
fi
if [ -n "${ELMO_DIST_VENV:-}" ]; then
    # shellcheck disable=SC1091
    source "${ELMO_DIST_VENV}/bin/activate"
fi

# the head node's address as Slurm knows it (its NodeAddr), and a port unique to this job
head_node="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"
head_addr="$(scontrol show node "${head_node}" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)"
export MASTER_ADDR="${head_addr:-${head_node}}"
export MASTER_PORT="${MASTER_PORT:-$((15000 + SLURM_JOB_ID % 20000))}"
# one thread pool per task, sized to its CPUs (left alone, each process would claim every core)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
echo "elmo-dist: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}:" \
     "${SLURM_NTASKS} tasks, rendezvous ${MASTER_ADDR}:${MASTER_PORT}"

# srun starts one `elmo-dist pretrain` per task; each takes its rank from SLURM_PROCID.
# The two variables may hold several words; they are split here, once, and quoted from then on.
read -r -a srun_args <<< "${ELMO_DIST_SRUN_ARGS:-}"
read -r -a cli <<< "${ELMO_DIST:-elmo-dist}"
srun --kill-on-bad-exit=1 "${srun_args[@]}" "${cli[@]}" pretrain "$@" &
srun_pid="$!"

received=""
forward() {
    received="$1"
    echo "elmo-dist: got SIG$1; asking the trainer to checkpoint and stop"
    kill -s "$1" "${srun_pid}" 2>/dev/null  # srun relays it to every task
}
trap 'forward USR2' USR2
trap 'forward USR1' USR1
trap 'forward TERM' TERM

status=0
while kill -0 "${srun_pid}" 2>/dev/null; do
    wait "${srun_pid}"
    status="$?"  # > 128 when a trapped signal interrupted the wait; the loop then waits again
done
wait "${srun_pid}" 2>/dev/null
last="$?"
[ "${last}" -ne 127 ] && status="${last}"

# 75: the trainer saved a checkpoint because of the warning signal or the time limit. A requeue signal
# that arrived before the trainer could handle it (still starting up) also deserves another go.
if [ "${status}" -eq 75 ] || { [ -n "${received}" ] && [ "${received}" != TERM ] && [ "${status}" -ne 0 ]; }; then
    echo "elmo-dist: requeueing job ${SLURM_JOB_ID} to resume from the newest checkpoint"
    scontrol requeue "${SLURM_JOB_ID}"
fi
exit "${status}"
