"""Hosts made of network namespaces, for multi-host tests (MPI alone, or a real coordinator with real ranks).

    with netns_cluster(tmp_path, hosts=2) as c:     # pytest.skip(reason) where namespaces are refused
        c.hosts          # ("10.77.<k>.1", "10.77.<k>.2"): one namespace each, device gm0
        c.head           # "10.77.<k>.254": this (root) namespace's address on the same switch
        c.script         # the ssh stand-in for hydra: `mpirun -launcher ssh -launcher-exec SCRIPT`
        c.mpirun_args    # [-launcher ssh -launcher-exec SCRIPT -localhost HEAD, -genv for TCP over gm0]
        c.cut(host); c.restore(host)   # the host's link down / up (its ranks stay, cut off from everyone)
        c.link_bytes(host)             # (rx, tx) bytes of the host's gm0

Topology: a bridge in a namespace of its own (the switch: no firewall rules of the machine apply to it),
one veth from each host namespace to it, and one from this namespace, so a coordinator here binds
`head` and the ranks in every host dial it there; hydra's proxies call mpirun back at `head`
(-localhost). The namespaces share the kernel, /dev/shm and the hostname, so UCX_TLS=tcp,
UCX_NET_DEVICES=gm0 and MPIR_CVAR_NOLOCAL=1 force MPI onto TCP over the veths, as between real hosts.
The launcher answers like ssh when the host's link is down ("ssh: connect to host H port 22: No route to
host", exit 255). Everything is deleted in a finally (namespaces, and so every veth and the bridge).

Needs root and iproute2; `ip netns add` refused → pytest.skip with the reason.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

DEVICE = "gm0"
FORCE_TCP = {"UCX_TLS": "tcp", "UCX_NET_DEVICES": DEVICE, "MPIR_CVAR_NOLOCAL": "1",
             "MPIR_CVAR_CH4_NETMOD": "ucx"}


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def kill_namespace_processes(ns: str) -> None:
    for pid in ip("netns", "pids", ns, check=False).stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass


def link_bytes(ns: str, device: str = DEVICE) -> tuple[int, int]:
    stats = json.loads(ip("-j", "-s", "-n", ns, "link", "show", "dev", device).stdout)[0]["stats64"]
    return stats["rx"]["bytes"], stats["tx"]["bytes"]


def write_launcher(path: Path, namespaces: dict[str, str], device: str = DEVICE) -> Path:
    """The ssh stand-in for hydra: "[-x] HOST command..." runs command in HOST's namespace, or fails like ssh
    when HOST's link is down."""
    cases = "\n".join(f"  {h}) ns={ns} ;;" for h, ns in namespaces.items())
    path.write_text(textwrap.dedent("""\
        #!/bin/sh
        # ssh stand-in for hydra: "[-x] HOST command..." runs command in HOST's network namespace
        [ "$1" = "-x" ] && shift
        host=$1; shift
        case "$host" in
        {cases}
          *) echo "ssh: Could not resolve hostname $host: Name or service not known" >&2; exit 255 ;;
        esac
        if [ "$(ip netns exec "$ns" cat /sys/class/net/{device}/operstate 2>/dev/null)" != "up" ]; then
          echo "ssh: connect to host $host port 22: No route to host" >&2; exit 255
        fi
        exec ip netns exec "$ns" sh -c "$*"
        """).format(cases=cases, device=device))
    path.chmod(0o755)
    return path


def require_netns(name: str) -> None:
    """Skip (with the reason) where network namespaces cannot be made."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed (apt-get install iproute2)")
    made = ip("netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` refused here: {made.stderr.strip()}")


@dataclass
class Cluster:
    hosts: tuple[str, ...]
    namespaces: dict[str, str]
    head: str
    script: Path
    mpirun_args: list[str] = field(default_factory=list)

    def cut(self, host: str) -> None:
        ip("-n", self.namespaces[host], "link", "set", DEVICE, "down")

    def restore(self, host: str) -> None:
        ip("-n", self.namespaces[host], "link", "set", DEVICE, "up")

    def link_bytes(self, host: str) -> tuple[int, int]:
        return link_bytes(self.namespaces[host])


@contextlib.contextmanager
def netns_cluster(tmp_path: Path, hosts: int = 2, subnet: int | None = None) -> Iterator[Cluster]:
    prefix = f"gm{os.getpid() % 100000}"
    subnet = 100 + os.getpid() % 100 if subnet is None else subnet
    switch = f"{prefix}-sw"
    names = [f"{prefix}-{chr(ord('a') + i)}" for i in range(hosts)]
    addrs = tuple(f"10.77.{subnet}.{i + 1}" for i in range(hosts))
    head = f"10.77.{subnet}.254"
    created: list[str] = []
    head_dev = f"{prefix}h"
    try:
        require_netns(switch)
        created.append(switch)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(names, addrs)):
            ip("netns", "add", ns)
            created.append(ns)
            ip("link", "add", f"{prefix}x{i}", "type", "veth", "peer", "name", f"{prefix}y{i}")
            ip("link", "set", f"{prefix}x{i}", "netns", ns)
            ip("-n", ns, "link", "set", f"{prefix}x{i}", "name", DEVICE)
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", DEVICE)
            ip("-n", ns, "link", "set", DEVICE, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("link", "set", f"{prefix}y{i}", "netns", switch)
            ip("-n", switch, "link", "set", f"{prefix}y{i}", "master", "br0", "up")
        ip("link", "add", head_dev, "type", "veth", "peer", "name", f"{prefix}yh")
        ip("link", "set", f"{prefix}yh", "netns", switch)
        ip("-n", switch, "link", "set", f"{prefix}yh", "master", "br0", "up")
        ip("addr", "add", f"{head}/24", "dev", head_dev)
        ip("link", "set", head_dev, "up")
        namespaces = dict(zip(addrs, names))
        script = write_launcher(tmp_path / "netns-ssh", namespaces)
        genv = [a for k, v in FORCE_TCP.items() for a in ("-genv", k, v)]
        yield Cluster(addrs, namespaces, head, script,
                      ["-launcher", "ssh", "-launcher-exec", str(script), "-localhost", head, *genv])
    finally:
        for ns in created:
            kill_namespace_processes(ns)
        for ns in created:
            ip("netns", "del", ns, check=False)
        ip("link", "del", head_dev, check=False)  # gone with the switch already; in case it was not moved
        leftover = [ns for ns in ip("netns", "list", check=False).stdout.split() if ns.startswith(prefix + "-")]
        assert not leftover, f"namespaces not deleted: {leftover}"
