"""A real two-host job: two network namespaces joined by a veth pair, hydra launching into them over "ssh".

    host 10.77.0.1 = namespace <prefix>-a, device gm0  <== veth ==>  device gm0, namespace <prefix>-b = host 10.77.0.2

mpirun itself runs in namespace a (`-localhost 10.77.0.1`, so the proxy in b can call it back) and
launches one hydra proxy per host through `-launcher ssh -launcher-exec SCRIPT`, where SCRIPT is a tiny
ssh stand-in that maps the host to `ip netns exec <namespace>`. The namespaces share the kernel, /dev/shm
and the hostname, so left alone UCX carries the traffic through shared memory (measured: ~9 kB cross the
link for 40 MB reduced); UCX_TLS=tcp, UCX_NET_DEVICES=gm0 and MPIR_CVAR_NOLOCAL=1 force it onto TCP over
the veth, as between real hosts. The veth byte counters (read in each namespace) then prove the
gradients crossed the link: at least steps × gradient bytes each way.

Needs root and iproute2 (`apt-get install iproute2`); skipped, with the reason, only where creating a
network namespace is refused. The namespaces (and so the veth) are deleted in a finally. The pieces (ip,
the launcher script, byte counters) are shared with the coordinator's multi-host tests: tests/netns_hosts.py.
"""
import json
import os
import re
import shutil
import textwrap

import numpy as np
import pytest

from mpi_programs.launch import PROGRAMS, run_mpi
from netns_hosts import DEVICE, FORCE_TCP, ip, kill_namespace_processes, link_bytes, wait_links_up, write_launcher

HOSTS = ("10.77.0.1", "10.77.0.2")
LAYERS = [64, 128, 128, 10]
STEPS = 50


@pytest.fixture
def two_hosts(tmp_path):
    """Yield {host: namespace} and the launcher script; tear everything down afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed (apt-get install iproute2)")
    prefix = f"gm{os.getpid()}"
    namespaces = (f"{prefix}-a", f"{prefix}-b")
    created = []
    try:
        for ns in namespaces:
            made = ip("netns", "add", ns, check=False)
            if made.returncode != 0:
                pytest.skip(f"`ip netns add` refused here: {made.stderr.strip()}")
            created.append(ns)
        # made inside namespace a, its peer put straight into b: never a device of this namespace, where the
        # machine's own MPI jobs would see it (UCX picks every device it sees)
        ip("-n", namespaces[0], "link", "add", DEVICE, "type", "veth", "peer", "name", f"{prefix}vb",
           "netns", namespaces[1])
        ip("-n", namespaces[1], "link", "set", f"{prefix}vb", "name", DEVICE)
        for ns, host in zip(namespaces, HOSTS):
            ip("-n", ns, "addr", "add", f"{host}/24", "dev", DEVICE)
            ip("-n", ns, "link", "set", DEVICE, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        wait_links_up(namespaces)
        script = write_launcher(tmp_path / "netns-ssh", dict(zip(HOSTS, namespaces)))
        yield dict(zip(HOSTS, namespaces)), script
    finally:
        for ns in created:
            kill_namespace_processes(ns)
            ip("netns", "del", ns, check=False)
        leftover = [ns for ns in ip("netns", "list", check=False).stdout.split() if ns.startswith(prefix)]
        assert not leftover, f"namespaces not deleted: {leftover}"


def launch_on_both(namespaces, script, argv, timeout, env=None):
    """mpirun -n 2 with one rank per host, started in host 1's namespace; leftovers get 6 s to exit."""
    return run_mpi(None, argv, prefix=["ip", "netns", "exec", namespaces[HOSTS[0]]],
                   mpirun_args=["-launcher", "ssh", "-launcher-exec", str(script), "-localhost", HOSTS[0],
                                "-hosts", ",".join(HOSTS), "-n", "2"],
                   env={**FORCE_TCP, **(env or {})}, timeout=timeout, settle_s=6.0)


@pytest.mark.timeout(120)
def test_two_host_training_sends_the_gradients_over_the_link(two_hosts, tmp_path):
    namespaces, script = two_hosts
    spec = tmp_path / "job.toml"
    spec.write_text(textwrap.dedent(f"""\
        name = "two-hosts"
        [model]
        layers = {LAYERS}
        [data]
        source = "digits"
        [train]
        steps = {STEPS}
        batch_size = 64
        eval_every = 25
        threads_per_rank = 1  # both "hosts" share this machine's cores: automatic would oversubscribe
        [checkpoint]
        every_steps = 0
        """))
    before = {ns: link_bytes(ns) for ns in namespaces.values()}
    result = launch_on_both(namespaces, script, ["python", "-m", "worker", "--spec", str(spec),
                                                 "--out", str(tmp_path / "out"), "--no-resume"], timeout=90)
    after = {ns: link_bytes(ns) for ns in namespaces.values()}
    assert not result.timed_out and result.returncode == 0, result.output
    assert f"done at step {STEPS}" in result.output, result.output
    assert "2 rank(s) × 1 BLAS thread(s)" in result.output, result.output
    assert result.leftovers == [], result.leftovers

    params = sum(i * o + o for i, o in zip(LAYERS[:-1], LAYERS[1:]))
    gradient_bytes = 4 * params
    for ns in namespaces.values():
        rx = after[ns][0] - before[ns][0]
        tx = after[ns][1] - before[ns][1]
        print(f"{ns}/{DEVICE}: rx {rx:,} B, tx {tx:,} B for {STEPS} steps × {gradient_bytes:,} B gradient "
              f"(job took {result.elapsed_s:.1f} s)")
        assert rx >= STEPS * gradient_bytes and tx >= STEPS * gradient_bytes, (
            f"{ns}: received {rx:,} B, sent {tx:,} B over {DEVICE}; "
            f"{STEPS} steps of a {gradient_bytes:,} B gradient need at least {STEPS * gradient_bytes:,} B each way")

    with np.load(tmp_path / "out" / "final.npz") as z:
        two_host = {k: z[k] for k in z.files if k.startswith("layers.")}
    local = run_mpi(1, ["python", "-m", "worker", "--spec", str(spec), "--out", str(tmp_path / "local"),
                        "--no-resume"], timeout=60)
    assert local.returncode == 0, local.output
    with np.load(tmp_path / "local" / "final.npz") as z:
        for name, arr in two_host.items():
            assert np.linalg.norm(arr - z[name]) <= 1e-5 * np.linalg.norm(z[name]), name


@pytest.mark.timeout(60)
def test_each_host_is_its_own_node_for_mpi(two_hosts):
    """MPI sees two nodes (COMM_TYPE_SHARED split gives 1 rank each): automatic BLAS threads use all cores."""
    namespaces, script = two_hosts
    result = launch_on_both(namespaces, script, ["python", str(PROGRAMS / "threads_report.py")], timeout=30,
                            env={"OMP_NUM_THREADS": "", "OPENBLAS_NUM_THREADS": "", "MKL_NUM_THREADS": ""})
    assert result.returncode == 0 and not result.timed_out, result.output
    rows = [json.loads(found) for found in re.findall(r"THREADS (\{[^{}]*\})", result.output)]
    assert sorted(row["rank"] for row in rows) == [0, 1], result.output
    cores = len(os.sched_getaffinity(0))
    for row in rows:
        assert row["local_size"] == 1 and row["threads"] == cores, row
    assert result.leftovers == []


@pytest.mark.timeout(60)
def test_a_host_cut_off_from_the_network_is_caught_by_the_watchdog(two_hosts):
    """Rank 1 takes its link down mid-run: MPI would spin forever; the watchdogs on BOTH sides end it.

    Rank 0's watchdog names rank 1 (no answer) and aborts; mpiexec kills what it can reach. Rank 1's own
    watchdog also fires, but its MPI_Abort cannot reach mpiexec and returns: worker.comm then exits the
    process itself, so nothing is left on the cut-off host either (its hydra proxy exits with it).
    """
    namespaces, script = two_hosts
    result = launch_on_both(namespaces, script, ["python", str(PROGRAMS / "hang.py"), "--rank", "1", "--step", "5",
                                                 "--how", "linkdown", "--device", DEVICE, "--timeout", "2"],
                            timeout=30)
    assert not result.timed_out, "the watchdog did not end the job:\n" + result.output
    assert result.returncode not in (0, None), result.output
    assert result.elapsed_s < 12, f"{result.elapsed_s:.1f} s"
    assert re.search(r"rank 0 on \S+: collective allreduce #6 did not complete within 2 s; "
                     r"silent rank\(s\): 1 \(no answer", result.output), result.output
    # run_mpi waits up to settle_s for marked processes to go: the cut-off rank must exit by itself.
    assert result.leftovers == [], result.leftovers
