"""A real single-node Slurm for the tests, inside a network namespace of its own.

    with SlurmCluster.start(tmp_dir) as slurm:       # munged + slurmctld + slurmd, this host as the node
        slurm.run(["srun", "--mpi=pmi2", "-n", "2", python, "-m", "worker", ...])
        slurm.run(["sbatch", "--wait", "examples/slurm/train.sbatch", ...])

Built from Debian's `slurm-wlm` and `munge` (`.ci/run` installs them when it runs as root). Everything runs
as root with its state, spool, logs and munge key under a temporary directory and a generated
`slurm.conf`: this host is the only node, with its real CPU count, in one partition.

Why a network namespace: slurmctld always listens on every address (Slurm's `NoInAddrAny` excludes it),
and tests may bind only to loopback or to namespaces they made. In a fresh namespace with only `lo` up,
"every address" is 127.0.0.1 of that namespace. So the daemons, the `srun`/`sbatch` calls and, for the
executor tests, `gradmesh serve` and its client all run through `nsenter --net=...` into the namespace; the ranks slurmd starts
inherit the namespace and reach a coordinator there on 127.0.0.1.

No shared filesystem: slurmd (and so every batch step, srun step and rank it starts) runs in a mount
namespace of its own, with an empty tmpfs over `cluster.hidden`. A coordinator whose data directory is under
`hidden` is on a disk the compute side cannot see, as on a cluster where only the login node holds it;
anything else (the venv, the checkout, the tests' other temporary files) is seen by both, as a shared home.

Where it cannot be had (not root, the packages or iproute2 absent, namespaces refused), `SlurmUnavailable`
says why and the tests skip with that reason.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

NEEDED = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "squeue", "scancel", "sinfo", "scontrol", "ip",
          "nsenter", "unshare", "mount")


class SlurmUnavailable(RuntimeError):
    """Why no Slurm can be brought up here (the tests skip with this reason)."""


def _conf(root: Path, node: str, cpus: int) -> str:
    return "\n".join([
        "ClusterName=gradmesh-test",
        # Job ids unique to this cluster's life: MPICH names its shared-memory segments after the PMI job, and
        # a segment left in /dev/shm by a killed job of an earlier cluster with the same id breaks MPI_Init.
        f"FirstJobId={1000 + int.from_bytes(os.urandom(3), 'big')}",
        f"SlurmctldHost={node}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={root}/munge/socket",
        "CredType=cred/munge",
        "SlurmctldPort=26817",
        "SlurmdPort=26818",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd.log",
        "ProctrackType=proctrack/linuxproc",  # no cgroups needed (containers, CI)
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MinJobAge=300",          # finished jobs stay visible to squeue/scontrol for the tests' checks
        "KillWait=5",             # SIGTERM, then SIGKILL 5 s later (scancel, time limits)
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
        "",
    ])


@dataclass
class SlurmCluster:
    root: Path
    namespace: str
    node: str
    cpus: int
    env: dict[str, str] = field(default_factory=dict)
    hidden: Path = Path()   # a directory the compute side (slurmd and all it starts) sees empty
    _daemons: list[subprocess.Popen] = field(default_factory=list)

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def start(cls, root: Path, *, timeout_s: float = 30.0) -> "SlurmCluster":
        missing = [tool for tool in NEEDED if shutil.which(tool) is None]
        if missing:
            raise SlurmUnavailable(f"missing {', '.join(missing)} (apt-get install slurm-wlm munge iproute2)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("a test Slurm needs root (slurmd runs the ranks as any user)")
        namespace = f"gmslurm{os.getpid()}"
        made = subprocess.run(["ip", "netns", "add", namespace], capture_output=True, text=True, timeout=10)
        if made.returncode != 0:
            raise SlurmUnavailable(f"`ip netns add` refused here: {made.stderr.strip()}")
        root = Path(root)
        cluster = cls(root=root, namespace=namespace, node=socket.gethostname(), cpus=os.cpu_count() or 1,
                      hidden=root / "login-node-only")
        try:
            cluster._bring_up(timeout_s)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _bring_up(self, timeout_s: float) -> None:
        # lo, plus a veth pair (both ends inside) with an address: getaddrinfo(AI_ADDRCONFIG), as Slurm calls
        # it, finds no IPv4 address at all in a namespace that has only loopback.
        for args in (["link", "set", "lo", "up"], ["link", "add", "gm0", "type", "veth", "peer", "name", "gm1"],
                     ["addr", "add", "10.78.0.1/24", "dev", "gm0"], ["link", "set", "gm0", "up"],
                     ["link", "set", "gm1", "up"]):
            subprocess.run(["ip", "-n", self.namespace, *args], check=True, timeout=10, capture_output=True)
        for sub in ("munge", "state", "spool", "log", self.hidden.name):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        conf = self.root / "slurm.conf"
        conf.write_text(_conf(self.root, self.node, self.cpus))
        self.env = {**os.environ, "SLURM_CONF": str(conf)}
        munge = self.root / "munge"
        self._daemon(["munged", "--foreground", "--force", f"--socket={munge}/socket", f"--key-file={key}",
                      f"--log-file={self.root}/log/munged.log", f"--pid-file={munge}/pid",
                      f"--seed-file={munge}/seed"])
        self._wait(lambda: (munge / "socket").exists(), timeout_s, "munged to open its socket")
        self._daemon(["slurmctld", "-D", "-c", "-i"])
        # slurmd in a mount namespace of its own (private: nothing propagates back), an empty tmpfs over `hidden`
        self._daemon(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                      'mount -t tmpfs -o size=1m,mode=0755 gradmesh-hidden "$0" && exec slurmd -D -c', str(self.hidden)])
        self._wait(self._node_idle, timeout_s, "the node to be idle in sinfo")
        marker = self.hidden / "seen-only-here"
        marker.write_text("the login node's disk\n")
        seen = self.run(["srun", "-n", "1", "ls", "-A", str(self.hidden)], check=False, timeout=60)
        if seen.returncode != 0 or seen.stdout.strip():
            raise SlurmUnavailable(f"the compute side still sees {self.hidden}: {seen.stdout} {seen.stderr}")

    def _daemon(self, argv: Sequence[str]) -> None:
        log = open(self.root / "log" / f"{argv[0]}.out", "ab")
        self._daemons.append(subprocess.Popen(self._in_namespace(argv), env=self.env, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        log.close()

    def _node_idle(self) -> bool:
        for daemon in self._daemons:
            if daemon.poll() is not None:
                raise SlurmUnavailable(f"{' '.join(map(str, daemon.args[2:]))[:160]} exited with "
                                       f"{daemon.returncode}; see {self.root / 'log'}")
        out = self.run(["sinfo", "-h", "-o", "%T"], check=False, timeout=10)
        return out.returncode == 0 and out.stdout.strip() == "idle"

    @staticmethod
    def _wait(predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel every job, stop the daemons and delete the namespace (and whatever still runs in it)."""
        if self.env and all(d.poll() is None for d in self._daemons):
            try:
                self.run(["scancel", "--full", "--user=root"], check=False, timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for daemon in reversed(self._daemons):
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGTERM)
        for daemon in reversed(self._daemons):
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=5)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # slurmstepd and ranks: whatever still lives in the namespace
            pids = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True,
                                  timeout=10).stdout.split()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            time.sleep(0.1)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=10)

    # ------------------------------------------------------------ a controller outage

    def stop_controller(self) -> None:
        """Stop slurmctld (as an outage would: the nodes and running steps stay); `start_controller` brings it
        back with its saved state (the jobs it knew)."""
        ctld = self._controller()
        os.killpg(ctld.pid, signal.SIGTERM)
        try:
            ctld.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ctld.pid, signal.SIGKILL)
            ctld.wait(timeout=10)

    def start_controller(self, timeout_s: float = 60.0) -> None:
        if self._controller().poll() is None:
            return
        index = self._daemons.index(self._controller())
        self._daemon(["slurmctld", "-D", "-i"])  # without -c: it recovers the jobs from its state directory
        self._daemons.insert(index, self._daemons.pop())
        self._wait(lambda: self.run(["scontrol", "ping"], check=False, timeout=30).returncode == 0, timeout_s,
                   "slurmctld to answer again")

    def _controller(self) -> subprocess.Popen:
        return next(d for d in self._daemons if "slurmctld" in d.args)

    def __enter__(self) -> "SlurmCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ using it

    def _in_namespace(self, argv: Sequence[str]) -> list[str]:
        # nsenter switches only the network namespace; `ip netns exec` would also remount /sys, hiding the
        # cgroup filesystem that slurmd insists on finding.
        return ["nsenter", f"--net=/run/netns/{self.namespace}", *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 120,
            env: Mapping[str, str] | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run a command (srun, sbatch, squeue, a gradmesh CLI call...) inside the cluster's namespace."""
        done = subprocess.run(self._in_namespace(argv), capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})}, cwd=cwd)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def popen(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs) -> subprocess.Popen:
        """Start a long-running command (e.g. `gradmesh serve`) inside the namespace, in its own session."""
        return subprocess.Popen(self._in_namespace(argv), env={**self.env, **(env or {})}, start_new_session=True,
                                **kwargs)
