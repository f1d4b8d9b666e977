"""Everything that knows about Slurm: the task environment, the requeue decision, and submitit jobs."""
