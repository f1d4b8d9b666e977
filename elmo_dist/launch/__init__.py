"""Everything that knows about Slurm: the launch environment (and, later, sbatch and submitit)."""
