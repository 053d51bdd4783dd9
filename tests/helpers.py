"""Helpers shared by the tests (import them from here; tests never import one another).

    wait_for(lambda: job.state == "RUNNING", timeout=30, what="the job to run")
    small_digits_spec(steps=60, workers=2)          # a quick digits job as a dict
    cert, key = self_signed_cert(tmp_path)          # for TLS tests (needs openssl)
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 60.0, what: str = "the condition",
             interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def small_digits_spec(steps: int = 60, workers: int = 2, **train: Any) -> dict:
    """A digits job that trains in a second or two."""
    return {"name": "digits-small", "workers": workers,
            "model": {"layers": [64, 32, 10]},
            "data": {"source": "digits"},
            "train": {"steps": steps, "batch_size": 64, "eval_every": 10, **train},
            "optim": {"name": "adam", "lr": 3e-3},
            "checkpoint": {"every_steps": 20, "keep_last": 2}}


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1/localhost, valid for a day; skips the test without openssl."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=30)
    return cert, key
