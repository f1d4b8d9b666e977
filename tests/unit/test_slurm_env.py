"""srun's task variables become torch.distributed's; a launcher's own variables win."""
from elmo_dist.launch.slurm_env import export_slurm_env, first_host


def test_first_host_of_compressed_node_lists():
    assert first_host("gpu[003-006,010],cpu01") == "gpu003"
    assert first_host("node7") == "node7"
    assert first_host("a[1,4]") == "a1"


def test_srun_task_variables_are_mapped():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "n[01-02]",
           "SLURM_JOB_ID": "4242"}
    assert export_slurm_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("3", "8", "1", "n01")
    assert env["MASTER_PORT"] == str(15000 + 4242)


def test_a_launcher_wins_and_single_tasks_are_left_alone():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "RANK": "5"}
    assert not export_slurm_env(env) and env["RANK"] == "5"
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert not export_slurm_env(env) and "RANK" not in env
