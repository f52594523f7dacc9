#!/bin/bash
# Rendered by `python -m rl.submit cluster=slurm` (rl/templates/sbatch.sh); manifest: @RUN_DIR@/manifest.json
# One Ray node per Slurm node: the head on the first node (where this script runs), workers on the
# others (srun), then `python -m rl.train` here as the driver, then Ray is stopped.
#SBATCH --job-name=@JOB_NAME@
#SBATCH --nodes=@NODES@
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
@SBATCH_EXTRA@#SBATCH --time=@TIME@
#SBATCH --output=@RUN_DIR@/slurm-%j.out
set -euo pipefail
cd @REPO@
@SETUP@@EXPORTS@export PYTHONUNBUFFERED=1
# The Ray cluster is private to this job: token authentication off unless cluster.env sets it.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_ip=$(python -c 'import ray.util; print(ray.util.get_node_ip_address())')
port=@RAY_PORT@
cpus="${SLURM_CPUS_ON_NODE:-1}"
head_args=(@HEAD_ARGS@)
worker_args=(@WORKER_ARGS@)
pids=()
stop_ray() {  # SIGTERM to each srun cancels its step: `ray start --block` stops that node's Ray processes
  # (srun then reports the task as "Killed": expected)
  if [ ${#pids[@]} -gt 0 ]; then kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; fi
  pids=()
}
trap stop_ray EXIT

echo "ray: head ${nodes[0]} ($head_ip:$port), ${#nodes[@]} node(s)"
srun --overlap --nodes=1 --ntasks=1 @SRUN_GPUS@-w "${nodes[0]}" \
  ray start --head --block --node-ip-address="$head_ip" --port="$port" --num-cpus="$cpus" \
  --num-gpus=@GPUS@ --include-dashboard=false --disable-usage-stats "${head_args[@]}" &
pids+=($!)
python -m rl.submit --wait-nodes "$head_ip:$port" 1 @WAIT_S@
for node in "${nodes[@]:1}"; do
  srun --overlap --nodes=1 --ntasks=1 @SRUN_GPUS@-w "$node" \
    ray start --block --address="$head_ip:$port" --num-cpus="$cpus" --num-gpus=@GPUS@ \
    --disable-usage-stats "${worker_args[@]}" &
  pids+=($!)
done
python -m rl.submit --wait-nodes "$head_ip:$port" @NODES@ @WAIT_S@

set +e
@TRAIN@
rc=$?
set -e
stop_ray
echo "rl.train exited with status $rc"
exit $rc
