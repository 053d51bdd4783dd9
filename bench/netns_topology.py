"""Hosts made of network namespaces: the topology that tests/netns_hosts.py and bench/links.py share.

    with namespace_hosts(workdir, hosts=2, subnet=120) as t:   # RuntimeError when namespaces are refused
        t.hosts        # ("10.<net>.<subnet>.1", ...): one namespace each, device gm0
        t.head         # "10.<net>.<subnet>.254": on the bridge, in the switch's namespace (hydra's -localhost)
        t.mpirun_args  # -launcher ssh -launcher-exec SCRIPT -localhost HEAD, -genv for TCP over gm0
        shape(t.namespaces[h], "1gbit")   # tc tbf on the host's gm0 (its egress: both directions once on every host)

A bridge lives in a namespace of its own (the switch), with one veth from each host namespace to it; both
ends of every link are inside namespaces made here, so the calling (root) namespace never sees a device of
theirs and MPI jobs of the machine never meet them. The namespaces share the kernel and /dev/shm, so
FORCE_TCP (UCX_TLS=tcp, UCX_NET_DEVICES=gm0, MPIR_CVAR_NOLOCAL=1) keeps MPI on TCP over the veths, as between
real hosts. hydra reaches a host through an ssh stand-in (write_launcher) that runs the command in the host's
namespace, or fails like ssh when the host's link is down. Everything is deleted in a finally.

No pytest here: tests/netns_hosts.py turns a refusal into pytest.skip, the bench into an error message.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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


def wait_links_up(namespaces, device: str = DEVICE, timeout_s: float = 10.0) -> None:
    """Until every namespace's device is operationally up: the kernel says so a moment after `link set up`
    of both ends (linkwatch), and the ssh stand-in refuses a host whose device is not up yet."""
    deadline = time.monotonic() + timeout_s
    for ns in namespaces:
        while ip("netns", "exec", ns, "cat", f"/sys/class/net/{device}/operstate", check=False).stdout.strip() != "up":
            if time.monotonic() > deadline:
                raise AssertionError(f"{device} in {ns} is not up after {timeout_s} s")
            time.sleep(0.05)


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


def refused(name: str) -> str:
    """Why namespaces cannot be made here ("" when `name` was made: the caller owns it from then on)."""
    if shutil.which("ip") is None:
        return "iproute2 is not installed (apt-get install iproute2)"
    made = ip("netns", "add", name, check=False)
    return "" if made.returncode == 0 else f"`ip netns add` refused here: {made.stderr.strip()}"


def shape(ns: str, rate: str | None, device: str = DEVICE) -> str:
    """Shape the egress of `ns`'s device with a token bucket (`tc qdisc replace ... tbf`), or remove the
    shaping (rate None). Returns what `tc qdisc show` says now.

    Burst: the bucket must hold a few of the veth's GSO packets (up to 64 KB each; tbf never passes a packet
    larger than its bucket), so 1 ms of the rate and at least 256 KB. Latency (how long a packet may queue)
    20 ms: room for TCP's window at these rates. With these, bench/links.py's socket stream measured 0.85-0.95
    Gbit/s through 1gbit on a loaded 2-core VM (tests/test_links_bench.py: within 0.6-1.05 of 200mbit)."""
    if rate is None:
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", device, "root"],
                       capture_output=True, text=True, timeout=10)
    else:
        burst = max(256 * 1024, int(parse_rate(rate) / 8 / 1000))
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", device, "root", "tbf",
                        "rate", rate, "burst", str(burst), "latency", "20ms"],
                       capture_output=True, text=True, timeout=10, check=True)
    return subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", device],
                          capture_output=True, text=True, timeout=10, check=True).stdout.strip()


def parse_rate(rate: str) -> float:
    """Bits per second of a tc rate such as "10gbit", "1gbit", "500mbit"."""
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1.0}
    for unit, scale in units.items():
        if rate.endswith(unit) and rate[:-len(unit)].replace(".", "", 1).isdigit():
            return float(rate[:-len(unit)]) * scale
    raise ValueError(f"rate must be a number and one of {sorted(units)}, e.g. 1gbit; got {rate!r}")


@dataclass
class Topology:
    hosts: tuple[str, ...]
    namespaces: dict[str, str]   # host address -> its namespace
    head: str
    script: Path
    mpirun_args: list[str]
    switch: str                  # the namespace of the bridge and of HEAD
    prefix: str                  # of every namespace and device name made


@contextlib.contextmanager
def namespace_hosts(workdir: Path, hosts: int = 2, subnet: int = 100, net: int = 77,
                    prefix: str | None = None) -> Iterator[Topology]:
    """`hosts` namespaces on one bridge (see the module docstring); RuntimeError(reason) when refused."""
    prefix = prefix or f"gm{os.getpid() % 100000}"
    switch = f"{prefix}-sw"
    names = [f"{prefix}-{chr(ord('a') + i)}" for i in range(hosts)]
    addrs = tuple(f"10.{net}.{subnet}.{i + 1}" for i in range(hosts))
    head = f"10.{net}.{subnet}.254"
    created: list[str] = []
    try:
        why = refused(switch)
        if why:
            raise RuntimeError(why)
        created.append(switch)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "addr", "add", f"{head}/24", "dev", "br0")
        ip("-n", switch, "link", "set", "br0", "up")
        ip("-n", switch, "link", "set", "lo", "up")
        for i, (ns, addr) in enumerate(zip(names, addrs)):
            ip("netns", "add", ns)
            created.append(ns)
            # made inside the host's namespace, its peer moved straight to the switch: never a device here
            ip("-n", ns, "link", "add", DEVICE, "type", "veth", "peer", "name", f"{prefix}y{i}", "netns", switch)
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", DEVICE)
            ip("-n", ns, "link", "set", DEVICE, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", switch, "link", "set", f"{prefix}y{i}", "master", "br0", "up")
        namespaces = dict(zip(addrs, names))
        wait_links_up(names)
        script = write_launcher(Path(workdir) / "netns-ssh", namespaces)
        genv = [a for k, v in FORCE_TCP.items() for a in ("-genv", k, v)]
        yield Topology(addrs, namespaces, head, script,
                       ["-launcher", "ssh", "-launcher-exec", str(script), "-localhost", head, *genv], switch, prefix)
    finally:
        for ns in created:
            kill_namespace_processes(ns)
        for ns in created:
            ip("netns", "del", ns, check=False)
        leftover = [ns for ns in ip("netns", "list", check=False).stdout.split() if ns.startswith(prefix + "-")]
        if leftover:
            raise AssertionError(f"namespaces not deleted: {leftover}")
