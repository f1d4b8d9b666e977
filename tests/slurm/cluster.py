"""A real Slurm cluster on localhost for the tests: munged, slurmctld and two slurmd daemons (nodes n1
and n2) from Debian's slurm-wlm, configured under a temporary directory and stopped by PID at the end.

    cluster = SlurmCluster(tmp_dir).start()
    job = cluster.sbatch(["--ntasks=2", "slurm/pretrain.sh", ...])
    cluster.wait(job)            # -> the job's final scontrol record, e.g. {"JobState": "COMPLETED", ...}
    cluster.stop()

The nodes are named n1 and n2 but both live on 127.0.0.1 (NodeAddr), on free ports picked at start-up. Each
claims 4 CPUs on a 2-core machine (config_overrides), so that a job of the tests never waits for
another's cores; the processes just share the real ones.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

NODES = ("n1", "n2")

SLURM_CONF = """\
ClusterName=elmotest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it starts again (default 120)
AuthInfo=cred_expire=15
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=600
KillWait=10
InactiveLimit=0
JobRequeue=1
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port={n1} CPUs=4 RealMemory=8000 State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port={n2} CPUs=4 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
"""


def why_unavailable() -> str | None:
    """None if a cluster can be started here, else the reason the Slurm tests must skip."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol") if not shutil.which(b)]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing; `make test` installs slurm-wlm as root)"
    if os.geteuid() != 0:
        return "the test cluster runs slurmd as root, and this is not root"
    if not Path("/etc/munge/munge.key").exists():
        return "/etc/munge/munge.key is missing (reinstall munge)"
    return None


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._munged_pid: int | None = None

    # -- daemons ---------------------------------------------------------------------------------
    def start(self) -> "SlurmCluster":
        for sub in ("state", "spool/n1", "spool/n2", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # free ports of our own: a cluster already running here (another test run, a real Slurm) is left alone
        ctld, n1, n2 = _free_ports(3)
        self.conf.write_text(SLURM_CONF.format(d=self.root, ctld_port=ctld, n1=n1, n2=n2))
        self._start_munged()
        subprocess.run(["slurmctld", "-f", str(self.conf), "-i"], env=self.env, check=True)
        for node in NODES:
            subprocess.run(["slurmd", "-f", str(self.conf), "-N", node], env=self.env, check=True)
        self._wait_idle(60)
        return self

    def _start_munged(self) -> None:
        # sacct and friends only talk to munged on its default socket, so that is where it runs
        sock = Path("/run/munge")
        if (sock / "munge.socket.2").exists() and subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return  # a munged is already serving this machine; leave it alone
        sock.mkdir(parents=True, exist_ok=True)
        shutil.chown(sock, "munge", "munge")
        sock.chmod(0o755)
        for sub in ("/var/log/munge", "/var/lib/munge"):
            Path(sub).mkdir(parents=True, exist_ok=True)
            shutil.chown(sub, "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True)
        pid_file = sock / "munged.pid"
        for _ in range(50):
            if pid_file.exists() and subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
                self._munged_pid = int(pid_file.read_text())
                return
            time.sleep(0.1)
        raise RuntimeError("munged did not start")

    def _wait_idle(self, timeout: float) -> None:
        deadline, states = time.time() + timeout, ""
        while time.time() < deadline:
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
            states = out.stdout
            if out.returncode == 0 and states.count("idle") >= len(NODES):
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm nodes did not come up: {states!r}\n{self.logs()}")

    def stop(self) -> None:
        pids = [self.root / "slurmd-n1.pid", self.root / "slurmd-n2.pid", self.root / "slurmctld.pid"]
        for pid_file in pids:
            if pid_file.exists():
                _kill(int(pid_file.read_text().strip()))
        if self._munged_pid:
            _kill(self._munged_pid)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((self.root / "log").glob("*.log")))

    # -- jobs --------------------------------------------------------------------------------------
    def run(self, cmd: list[str], check: bool = True, env: dict | None = None, cwd=None):
        proc = subprocess.run(cmd, env={**self.env, **(env or {})}, capture_output=True, text=True, cwd=cwd,
                              timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def sbatch(self, args: list[str], env: dict | None = None, cwd=None) -> str:
        return self.run(["sbatch", "--parsable", *args], env=env, cwd=cwd).stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict:
        out = self.run(["scontrol", "show", "job", "-o", job_id], check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: str, timeout: float = 300, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                             "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            rec = self.job(job_id)
            if rec.get("JobState") in until:
                return rec
            time.sleep(1)
        raise AssertionError(f"job {job_id} still {self.job(job_id).get('JobState')} after {timeout} s\n{self.logs()}")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _kill(pid: int, timeout: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    reason = why_unavailable()
    if reason:
        if os.environ.get("ELMO_DIST_REQUIRE_SLURM") == "1":
            pytest.fail(f"ELMO_DIST_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    # submitit (in this process) and the jobs find the cluster through SLURM_CONF
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
