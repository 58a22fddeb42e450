"""A real single-node SLURM for the tests: munged, slurmctld and slurmd from the distribution's packages, each
with a private configuration, key, sockets, state and logs under one temporary folder, on free loopback ports.

Why a real one: what a cluster user meets (array indices in the environment, ``afterany`` dependencies, a task
``scancel``led and resubmitted, the job's working directory and environment) is SLURM's behaviour, not ours, and a
stand-in would only repeat our own assumptions. The daemons run as root (as CI does); the cluster is started per
test module and stopped (every daemon, by its own PID) afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
START_TIMEOUT_S = 60


def missing_binaries() -> list[str]:
    """The daemons and clients this module needs that are not on ``PATH`` (also looked for in ``/usr/sbin``)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that are free now (bound and released at once)."""
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def free_port() -> int:
    """One loopback port that is free now."""
    return _free_ports(1)[0]


def _real_memory_mb() -> int:
    """What slurmd will find on this machine, less a margin (a node announcing more than it has is drained)."""
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return max(256, int(pages * page_size / 2**20 * 0.9))


@dataclass
class SlurmCluster:
    """A running single-node cluster; :meth:`env` is the environment its clients (sbatch, squeue, ...) need."""

    root: Path
    conf: Path
    pids: dict[str, int] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, SLURM_CONF=str(self.conf), **extra)
        env["PATH"] = env.get("PATH", "") + os.pathsep + "/usr/sbin"
        return env

    def run(self, *args: str, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), capture_output=True, text=True, env=self.env(**extra_env), timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}\n{self.logs()}")
        return proc

    def sbatch(self, *args: str, **extra_env: str) -> str:
        """Submit; returns the job ID (``--parsable``)."""
        return self.run("sbatch", "--parsable", *args, **extra_env).stdout.strip().split(";")[0]

    def state(self, job: str) -> str:
        """A job's (or array task's, ``123_1``) state: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...;
        after it left the queue, what ``scontrol show job`` still remembers (MinJobAge below)."""
        out = self.run("scontrol", "-o", "show", "job", job, check=False).stdout
        for token in out.split():
            if token.startswith("JobState="):
                return token.split("=", 1)[1]
        return "UNKNOWN"

    def array_states(self, job: str) -> dict[str, str]:
        """Every task of array ``job``: ``{"123_0": "COMPLETED", ...}``."""
        out = self.run("scontrol", "-o", "show", "job", job, check=False).stdout
        states = {}
        for line in out.splitlines():
            fields = dict(t.split("=", 1) for t in line.split() if "=" in t)
            if "ArrayTaskId" in fields:
                states[f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"] = fields.get("JobState", "UNKNOWN")
            elif "JobId" in fields:
                states[fields["JobId"]] = fields.get("JobState", "UNKNOWN")
        return states

    def wait(self, jobs: list[str], timeout_s: float = 600) -> dict[str, str]:
        """Wait until no task of ``jobs`` is pending or running; returns every task's final state."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = {k: v for j in jobs for k, v in self.array_states(j).items()}
            if states and all(s not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED")
                              for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs {jobs} still {states} after {timeout_s} s\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        """The tails of the daemons' logs, for a failure message."""
        parts = []
        for name in ("slurmctld", "slurmd", "munged"):
            path = self.root / "log" / f"{name}.log"
            if path.exists():
                parts.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop every daemon this cluster started (by PID), jobs first (slurmd kills its job steps)."""
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs: a daemon's exit leaves a zombie where PID 1 does not reap (containers)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _read_pid(path: Path, timeout_s: float = START_TIMEOUT_S) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.1)
    raise TimeoutError(f"{path} not written within {timeout_s} s")


def write_config(root: Path, cpus: int) -> Path:
    """``slurm.conf`` of a one-node cluster under ``root`` (no accounting, no cgroups)."""
    ctld_port, slurmd_port = _free_ports(2)
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=monaiunetseg-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / 'run' / 'munge.socket'}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}
SlurmdPidFile={root / 'run' / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
SchedulerParameters=defer_batch=0
PlugStackConfig={root / 'plugstack.conf'}
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_real_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")
    (root / "plugstack.conf").write_text("")
    return conf


def start_cluster(root: Path) -> SlurmCluster:
    """Start munged, slurmctld and slurmd under ``root`` and wait for the node to be idle."""
    cpus = os.cpu_count() or 1
    conf = write_config(root, cpus)
    cluster = SlurmCluster(root, conf)
    key = root / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    run, log = root / "run", root / "log"
    env = cluster.env()  # PATH with /usr/sbin, where Debian puts the daemons
    try:
        subprocess.run(["munged", "--force", f"--socket={run / 'munge.socket'}", f"--key-file={key}",
                        f"--pid-file={run / 'munged.pid'}", f"--log-file={log / 'munged.log'}",
                        f"--seed-file={root / 'state' / 'munged.seed'}"], check=True, capture_output=True,
                       env=env, timeout=30)
        cluster.pids["munged"] = _read_pid(run / "munged.pid")
        subprocess.run(["slurmctld", "-f", str(conf), "-i"], check=True, capture_output=True, env=env, timeout=30)
        cluster.pids["slurmctld"] = _read_pid(run / "slurmctld.pid")
        subprocess.run(["slurmd", "-f", str(conf), "-N", "localhost"], check=True, capture_output=True, env=env,
                       timeout=30)
        cluster.pids["slurmd"] = _read_pid(run / "slurmd.pid")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            state = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
            if state.rstrip("*") in ("idle", "mixed", "allocated"):
                return cluster
            if time.monotonic() > deadline:
                raise TimeoutError(f"the SLURM node is '{state}' after {START_TIMEOUT_S} s\n{cluster.logs()}")
            time.sleep(0.3)
    except BaseException:
        cluster.stop()
        raise
