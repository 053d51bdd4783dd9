"""Files and permissions: a private data directory, a token file that is never followed or left loose, a
filtered worker environment, and dataset files checked against the data roots when a rank opens them."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from conftest import job_stub
from coordinator.supervision.launcher import build_worker_env
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.api.server import load_or_create_token
from coordinator.wire import DATA_ROOTS_ENV, TOKEN_FILE
from helpers import wait_for
from worker.data import DataError, load_dataset
from worker.spec import DataSpec

pytestmark = pytest.mark.timeout(90)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_data_dir_is_0700_and_the_token_file_0600(start_coordinator, tmp_path):
    srv = start_coordinator(tmp_path / "fresh")
    assert mode_of(srv.data_dir) == 0o700
    assert mode_of(srv.data_dir / TOKEN_FILE) == 0o600
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    srv = start_coordinator(loose)
    assert mode_of(srv.data_dir) == 0o700


def test_a_symlink_in_place_of_the_token_file_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    elsewhere = tmp_path / "someone-elses-file"
    elsewhere.write_text("do not touch\n")
    (data_dir / TOKEN_FILE).symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="symbolic link"):
        load_or_create_token(data_dir, None)
    (data_dir / TOKEN_FILE).unlink()
    (data_dir / TOKEN_FILE).symlink_to(tmp_path / "dangling")  # O_CREAT alone would create the target
    with pytest.raises(PermissionError, match="symbolic link"):
        load_or_create_token(data_dir, None)
    assert elsewhere.read_text() == "do not touch\n" and not (tmp_path / "dangling").exists()


def test_a_loose_token_file_is_made_0600_with_a_warning(tmp_path, caplog):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    path = data_dir / TOKEN_FILE
    path.write_text("abc123\n")
    os.chmod(path, 0o644)
    assert load_or_create_token(data_dir, None) == "abc123"
    assert mode_of(path) == 0o600
    assert "readable by others" in caplog.text


def test_the_worker_environment_is_an_allowlist():
    base = {"PATH": "/bin", "HOME": "/h", "LANG": "C.UTF-8", "LC_ALL": "C", "TMPDIR": "/t", "OMP_NUM_THREADS": "1",
            "MPICH_PORT_RANGE": "1:2", "HYDRA_IFACE": "lo", "UCX_TLS": "tcp", "FI_PROVIDER": "tcp",
            "GRADMESH_FAULT": "nan:step=5",
            # not for the ranks:
            "GRADMESH_TOKEN": "client-secret", "GRADMESH_ADDRESS": "x:1", "AWS_SECRET_ACCESS_KEY": "k",
            "SSH_AUTH_SOCK": "/s", "GRADMESH_JOB_TOKEN": "stale", "GRADMESH_TLS_CA": "/stale"}
    env = build_worker_env(base, job_token="job-token", attempt_tag="tag", data_roots=[Path("/data/a"), Path("/b")])
    for kept in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OMP_NUM_THREADS", "MPICH_PORT_RANGE", "HYDRA_IFACE",
                 "UCX_TLS", "FI_PROVIDER", "GRADMESH_FAULT"):
        assert env[kept] == base[kept], kept
    for dropped in ("GRADMESH_TOKEN", "GRADMESH_ADDRESS", "AWS_SECRET_ACCESS_KEY", "SSH_AUTH_SOCK", "GRADMESH_TLS_CA"):
        assert dropped not in env, dropped
    assert env["GRADMESH_JOB_TOKEN"] == "job-token" and env["GRADMESH_ATTEMPT_TAG"] == "tag"
    assert env[DATA_ROOTS_ENV] == os.pathsep.join(["/data/a", "/b"])
    assert set(env) == set(base) - {"GRADMESH_TOKEN", "GRADMESH_ADDRESS", "AWS_SECRET_ACCESS_KEY", "SSH_AUTH_SOCK",
                                    "GRADMESH_TLS_CA"} | {"GRADMESH_ATTEMPT_TAG", DATA_ROOTS_ENV, "PYTHONPATH",
                                                          "PYTHONUNBUFFERED"}


def _dataset_with_a_link_outside(tmp_path: Path) -> tuple[Path, Path]:
    """(data root, dataset directory inside it whose x.npy is a symlink to a file outside the root)."""
    rng = np.random.default_rng(0)
    root, outside = tmp_path / "roots", tmp_path / "private"
    (root / "ds").mkdir(parents=True)
    outside.mkdir()
    np.save(outside / "secret.npy", rng.standard_normal((64, 4)).astype(np.float32))
    (root / "ds" / "x.npy").symlink_to(outside / "secret.npy")
    np.save(root / "ds" / "y.npy", rng.integers(0, 2, 64))
    return root, root / "ds"


def test_a_dataset_file_linking_outside_the_roots_is_refused_when_opened(tmp_path, monkeypatch):
    root, ds = _dataset_with_a_link_outside(tmp_path)
    spec = DataSpec(source=str(ds))
    assert len(load_dataset(spec, (4, 2), "cross_entropy", seed=0).train) > 0  # standalone: no roots, no check
    monkeypatch.setenv(DATA_ROOTS_ENV, str(root))
    with pytest.raises(DataError, match="outside the data roots"):
        load_dataset(spec, (4, 2), "cross_entropy", seed=0)
    monkeypatch.setenv(DATA_ROOTS_ENV, os.pathsep.join([str(root), str(tmp_path / "private")]))
    assert len(load_dataset(spec, (4, 2), "cross_entropy", seed=0).train) > 0


def test_a_job_whose_dataset_links_outside_the_roots_fails_with_exit_2_and_one_line(tmp_path, start_coordinator):
    root, ds = _dataset_with_a_link_outside(tmp_path)
    srv = start_coordinator(data_roots=[root])
    spec = f"""
name = "escape"
workers = 1
[model]
layers = [4, 8, 2]
[data]
source = "{ds}"
[train]
steps = 20
batch_size = 16
"""
    api = job_stub(srv)
    api.SubmitJob(pb.SubmitJobRequest(spec=spec, job_id="escape"))
    job = wait_for(lambda: (j := api.GetJob(pb.GetJobRequest(job_id="escape"))).state in (pb.SUCCEEDED, pb.FAILED)
                   and j, timeout=60, what="the job to end")
    assert job.state == pb.FAILED and "outside the data roots" in job.message, job.message
    attempts = srv.store.attempts("escape")
    assert len(attempts) == 1 and attempts[0].exit_code == 2
    lines = [line for line in Path(attempts[0].log_path).read_text().splitlines() if "outside the data roots" in line]
    assert len(lines) == 1, lines
