"""Shared fixtures: a real coordinator on 127.0.0.1:0 in a temporary data directory, and stubs to call it.

    def test_x(coordinator):                      # a RunningServer (2 local slots), stopped afterwards
        stub = job_stub(coordinator)              # JobService stub with the bearer token attached
    def test_y(start_coordinator):                # factory: start_coordinator(slots=4, data_roots=[...])

Stopping a server also stops its running jobs (SIGTERM, grace, SIGKILL), so no test leaves workers behind;
and the MPICH shared-memory segments of ranks that tests killed or aborted go at the end of the session.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# The ranks the coordinator launches import `worker` from this checkout (launcher.build_worker_env also
# ensures it); make the venv's mpirun the one found first.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

# the `browser` fixture of the dashboard's browser tests (Debian's Chromium through Playwright)
pytest_plugins = ("chromium",)

# A suite started in the background by a non-interactive shell (`nohup .ci/run &`) inherits SIGINT ignored, and
# so would every process it starts, since an ignored signal stays ignored across exec: the tests that press
# Ctrl-C on the CLI, the demo or srun would then wait on processes that cannot hear it. A handler, unlike an
# ignore, is reset to the default by exec, so the processes the tests start hear Ctrl-C again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind():
    """Ranks that tests kill, or that abort (the hang and fault tests), never reach MPI_Finalize, so MPICH's
    /dev/shm segments of theirs stay, holding RAM. A coordinator's janitor removes those of its own jobs
    (coordinator.supervision.shm_leftovers); this removes the rest made during the session that nothing maps any more."""
    started = time.time()
    yield
    from coordinator.supervision.shm_leftovers import PREFIX, SHM_DIR, mapped_paths
    if not SHM_DIR.is_dir():
        return
    ours = []
    for path in SHM_DIR.glob(PREFIX + "*"):
        try:
            st = path.stat(follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid == os.getuid() and st.st_ctime >= started:
            ours.append(path)
    in_use = mapped_paths() if ours else set()
    for path in ours:
        if str(path) not in in_use:
            path.unlink(missing_ok=True)


class AuthedJobStub:
    """JobService stub that attaches the bearer token and a default deadline to every call."""

    def __init__(self, channel: grpc.Channel, token: str, timeout: float = 10.0):
        from coordinator.rpc import gradmesh_pb2_grpc as rpc
        self._stub = rpc.JobServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout

    def __getattr__(self, name):
        method = getattr(self._stub, name)

        def call(request, timeout=None, metadata=()):
            return method(request, timeout=timeout or self._timeout, metadata=self._metadata + tuple(metadata))
        return call


@pytest.fixture
def start_coordinator(tmp_path):
    """Factory: start_coordinator(**start_server_kwargs) -> RunningServer; every server is stopped at the end."""
    from coordinator.api.server import start_server
    servers = []

    def start(data_dir: Path | None = None, **kwargs):
        kwargs.setdefault("slots", 2)
        kwargs.setdefault("data_roots", [tmp_path])
        srv = start_server(data_dir or tmp_path / f"coord{len(servers)}", **kwargs)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop(grace=1.0)


@pytest.fixture
def coordinator(start_coordinator):
    """A running coordinator with 2 local slots in a fresh temporary data directory."""
    return start_coordinator()


@pytest.fixture
def channel(coordinator):
    with grpc.insecure_channel(coordinator.address) as ch:
        yield ch


def job_stub(srv, channel: grpc.Channel | None = None) -> AuthedJobStub:
    ch = channel or grpc.insecure_channel(srv.address)
    return AuthedJobStub(ch, srv.token)


@pytest.fixture
def jobs(coordinator, channel) -> AuthedJobStub:
    """JobService stub for `coordinator`, token attached."""
    return AuthedJobStub(channel, coordinator.token)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node Slurm (tests/slurm_cluster.py), shared by the tests that need it; skipped, with the
    reason, where it cannot be brought up."""
    from slurm_cluster import SlurmCluster, SlurmUnavailable
    try:
        cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as why:
        pytest.skip(f"no test Slurm here: {why}")
    yield cluster
    cluster.stop()
