"""Hosts made of network namespaces, for multi-host tests (MPI alone, or a real coordinator with real ranks).

    with netns_cluster(tmp_path, hosts=2) as c:     # pytest.skip(reason) where namespaces are refused
        c.hosts          # ("10.77.<k>.1", "10.77.<k>.2"): one namespace each, device gm0
        c.head           # "10.77.<k>.254": the coordinator's address, in the switch's namespace
        c.script         # the ssh stand-in for hydra: `mpirun -launcher ssh -launcher-exec SCRIPT`
        c.mpirun_args    # [-launcher ssh -launcher-exec SCRIPT -localhost HEAD, -genv for TCP over gm0]
        srv = c.serve(tmp_path / "coord", "--host-failures", "1")   # `gradmesh serve` at HEAD (HeadCoordinator)
        srv.address, srv.token, srv.data_dir    # 127.0.0.1:PORT here, forwarded to HEAD:PORT in the switch
        c.cut(host); c.restore(host)   # the host's link down / up (its ranks stay, cut off from everyone)
        c.link_bytes(host)             # (rx, tx) bytes of the host's gm0

Topology: a bridge in a namespace of its own (the switch: no firewall rules of the machine apply to it),
holding HEAD on the bridge itself, and one veth from each host namespace to it. Both ends of every link are
inside the tests' namespaces, so this (root) namespace sees no device of theirs: MPI jobs of the machine
(UCX picks every device it sees) never meet them. The coordinator runs in the switch's namespace, as
`gradmesh serve --host HEAD` through nsenter, so its mpirun is there too (hydra's proxies call it back at
HEAD: -localhost); the test talks to it through a forwarder: a thread of the test process that entered the
switch's namespace (setns acts on the calling thread alone) relays 127.0.0.1:PORT here to HEAD:PORT there.
The namespaces share the kernel, /dev/shm and the hostname, so UCX_TLS=tcp, UCX_NET_DEVICES=gm0 and
MPIR_CVAR_NOLOCAL=1 force MPI onto TCP over the veths, as between real hosts. The launcher answers like ssh
when the host's link is down ("ssh: connect to host H port 22: No route to host", exit 255). Everything is
deleted in a finally (namespaces, and so every veth and the bridge).

The topology itself (namespaces, bridge, veths, the launcher) is bench/netns_topology.py's, shared with
bench/links.py. Needs root and iproute2; `ip netns add` refused → pytest.skip with the reason.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from bench.netns_topology import (  # noqa: F401  (the tests' names for the shared topology)
    DEVICE, FORCE_TCP, ip, kill_namespace_processes, link_bytes, namespace_hosts, refused, wait_links_up,
    write_launcher)


def require_netns(name: str) -> None:
    """Skip (with the reason) where network namespaces cannot be made."""
    why = refused(name)
    if why:
        pytest.skip(why)


@dataclass
class Cluster:
    hosts: tuple[str, ...]
    namespaces: dict[str, str]
    head: str
    script: Path
    mpirun_args: list[str] = field(default_factory=list)
    switch: str = ""     # the namespace of the bridge and of HEAD
    prefix: str = ""     # of every namespace and device name it made

    def serve(self, data_dir: Path, *args: str, data_root: Path | None = None) -> "HeadCoordinator":
        """`gradmesh serve` at HEAD with this cluster's hosts (2 slots each) and mpirun arguments."""
        return HeadCoordinator(self, data_dir, args, data_root or data_dir.parent)

    def cut(self, host: str) -> None:
        ip("-n", self.namespaces[host], "link", "set", DEVICE, "down")

    def restore(self, host: str) -> None:
        ip("-n", self.namespaces[host], "link", "set", DEVICE, "up")

    def link_bytes(self, host: str) -> tuple[int, int]:
        return link_bytes(self.namespaces[host])


@contextlib.contextmanager
def netns_cluster(tmp_path: Path, hosts: int = 2, subnet: int | None = None) -> Iterator[Cluster]:
    subnet = 100 + os.getpid() % 100 if subnet is None else subnet
    probe = f"gm{os.getpid() % 100000}-probe"
    require_netns(probe)                 # skipped with the reason where namespaces are refused
    ip("netns", "del", probe, check=False)
    with namespace_hosts(tmp_path, hosts, subnet) as t:
        yield Cluster(t.hosts, t.namespaces, t.head, t.script, t.mpirun_args, t.switch, t.prefix)


def visible_devices(prefix: str) -> list[str]:
    """The devices of this (root) namespace whose names start with `prefix` (a cluster's: none may be here)."""
    return [line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link", "show").stdout.splitlines()
            if line.split(":")[1].strip().startswith(prefix)]


# ---------------------------------------------------------------- a coordinator at HEAD, and the way to it

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_namespace(namespace: str) -> None:
    """Move the calling THREAD into the network namespace (setns(2) acts on the calling thread alone): the
    sockets it creates from now on are there."""
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {namespace}: {os.strerror(err)}")
    finally:
        os.close(fd)


class Forwarder:
    """127.0.0.1:PORT in this namespace → `target` in `namespace`, relayed by one thread that lives there."""

    def __init__(self, namespace: str, target: tuple[str, int]):
        self.namespace, self.target = namespace, target
        self._listener = socket.create_server(("127.0.0.1", 0))  # made before the thread moves: it stays here
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._failed: list[BaseException] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"forward-{namespace}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._failed:
            raise self._failed[0]

    def _run(self) -> None:
        try:
            enter_namespace(self.namespace)
        except BaseException as err:  # noqa: BLE001 - said by the constructor
            self._failed.append(err)
            self._ready.set()
            return
        self._ready.set()
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.2):
                    sock = key.fileobj
                    if sock is self._listener:
                        near, _ = self._listener.accept()
                        try:
                            far = socket.create_connection(self.target, timeout=5)  # made here: in the namespace
                        except OSError:
                            near.close()
                            continue
                        far.settimeout(None)
                        peers[near], peers[far] = far, near
                        sel.register(near, selectors.EVENT_READ)
                        sel.register(far, selectors.EVENT_READ)
                        continue
                    other = peers.get(sock)
                    try:
                        data = sock.recv(1 << 16)
                        if data and other is not None:
                            other.sendall(data)
                    except OSError:
                        data = b""
                    if not data:
                        for end in (sock, other):
                            if end is not None and end in peers:
                                sel.unregister(end)
                                peers.pop(end, None)
                                end.close()
        finally:
            for end in list(peers):
                end.close()
            self._listener.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class HeadCoordinator:
    """`gradmesh serve --host HEAD --hosts H1:2,H2:2` in the switch's namespace, reached through a Forwarder.

    address / token / data_dir as a RunningServer has them; `stop()` stops it (SIGTERM: its jobs are stopped)."""

    def __init__(self, cluster: Cluster, data_dir: Path, args, data_root: Path, timeout_s: float = 60.0):
        root = Path(__file__).resolve().parent.parent
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{data_dir.name}-serve.log"
        argv = ["nsenter", f"--net=/run/netns/{cluster.switch}", sys.executable, "-m", "coordinator.cli", "serve",
                "--host", cluster.head, "--port", "0", "--http-port", "0", "--data-dir", str(data_dir),
                "--data-root", str(data_root), "--hosts", ",".join(f"{h}:2" for h in cluster.hosts),
                *[f"--mpirun-arg={a}" for a in cluster.mpirun_args], *args]
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        for key in ("GRADMESH_ADDRESS", "GRADMESH_TOKEN"):
            env.pop(key, None)
        self.proc = subprocess.Popen(argv, env=env, cwd=root, stdout=subprocess.PIPE, stderr=open(self.log, "ab"),
                                     text=True, start_new_session=True)
        line, deadline = "", time.monotonic() + timeout_s
        while "listening on" not in line:
            line = self.proc.stdout.readline()
            if not line and (self.proc.poll() is not None or time.monotonic() > deadline):
                self.proc.kill()
                raise AssertionError(f"gradmesh serve did not start:\n{self.log.read_text()}")
        host, port = line.split("listening on", 1)[1].strip().rsplit(":", 1)
        self.head_address = f"{host}:{port}"
        self.forwarder = Forwarder(cluster.switch, (host, int(port)))
        self.address = self.forwarder.address
        self.token = (data_dir / "token").read_text().strip()

    def stop(self, grace: float = 30.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace + 30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.forwarder.close()
