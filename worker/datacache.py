"""A converted copy of a dataset file, built once and memory-mapped ever after.

A CSV file or a gzipped IDX file cannot be memory-mapped: its rows have no fixed place in the file. The first
run converts it into `.npy` files, and every later epoch, restart or rank maps those instead:

    paths = cached(Path("data/train.csv"), "csv:label", ("x", "y"), build)
    # data/.train.csv.gradmesh-<16 hex of sha256(file) and tag>.x.npy, .y.npy

The name carries a hash of the source's bytes (and of `tag`, which says how it was converted), so a changed
source gets a new cache and the stale one is deleted. The cache lies beside the source; when that directory
is read-only it goes to $GRADMESH_CACHE_DIR (default ~/.cache/gradmesh). Ranks on one host share it: the
first to take the lock converts, the others wait and map the result; a crash mid-conversion leaves only a
temporary file behind, never a half-written cache (files are renamed into place when complete).

Data generated from a few numbers (the synthetic source) is cached the same way, keyed by a hash of those
numbers and of how they are turned into arrays, in $GRADMESH_CACHE_DIR: every attempt of a sweep's trials
would otherwise draw the same 20000 x 784 Gaussian sample again (0.3-0.5 s each on the bench's machine).

    paths = generated("synthetic-v1", "20000,784,10,1", ("x", "y"), build)   # None: too small to be worth it

The newest few such caches are kept (by the time they were last used); older ones are deleted.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

CACHE_DIR_ENV = "GRADMESH_CACHE_DIR"
_MARK = ".gradmesh-"
_HASH_CHUNK = 1 << 22


def source_hash(path: Path, tag: str) -> str:
    """16 hex digits of sha256(tag, the file's bytes): reading at disk speed, far faster than parsing it."""
    digest = hashlib.sha256(tag.encode() + b"\0")
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _cache_dir(source: Path) -> Path:
    if os.access(source.parent, os.W_OK | os.X_OK):
        return source.parent
    fallback = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "gradmesh")
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def cached(source: Path, tag: str, names: Sequence[str], build: Callable[[dict[str, Path]], None]) -> dict[str, Path]:
    """{name: path of the cached `.npy`} for `source`; `build(paths)` writes every one of `paths` when the
    cache is missing (it may raise; nothing is left in place then)."""
    key = source_hash(source, tag)
    directory = _cache_dir(source)
    return _built(directory, f".{source.name}{_MARK}", key, names, build)


KEEP_GENERATED = 4   # generated caches kept per cache directory (each may be tens of MB)


def generated(tag: str, recipe: str, names: Sequence[str],
              build: Callable[[dict[str, Path]], None]) -> dict[str, Path]:
    """{name: path of the cached `.npy`} of data that `build(paths)` generates from `recipe` alone (the same
    recipe and tag give the same bytes); built when missing. Raises OSError when the cache directory cannot
    be written (the caller then generates in memory)."""
    key = hashlib.sha256(f"{tag}\0{recipe}".encode()).hexdigest()[:16]
    directory = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "gradmesh")
    directory.mkdir(parents=True, exist_ok=True)
    stem = f".{tag}{_MARK}"
    final = _built(directory, stem, key, names, build, drop_stale=False)
    for p in final.values():  # "used now": the pruning below keeps the recently used ones
        os.utime(p)
    _keep_newest(directory, stem, KEEP_GENERATED)
    return final


def _built(directory: Path, stem: str, key: str, names: Sequence[str], build: Callable[[dict[str, Path]], None],
           drop_stale: bool = True) -> dict[str, Path]:
    final = {name: directory / f"{stem}{key}.{name}.npy" for name in names}
    if all(p.is_file() for p in final.values()):
        return final
    with open(directory / f"{stem}{key}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another rank may be converting: wait for it, then use its result
        try:
            if not all(p.is_file() for p in final.values()):
                tmp = {name: p.with_name(f"{p.name}.{os.getpid()}.tmp") for name, p in final.items()}
                try:
                    build(tmp)
                    for name, p in tmp.items():
                        os.replace(p, final[name])
                finally:
                    for p in tmp.values():
                        p.unlink(missing_ok=True)
                if drop_stale:
                    _drop_stale(directory, stem, key)
        finally:
            Path(lock.name).unlink(missing_ok=True)
    return final


def _drop_stale(directory: Path, stem: str, key: str) -> None:
    """Delete caches of earlier versions of the same source (their hash differs): they would only fill the disk."""
    for old in directory.glob(f"{stem}*"):
        if not old.name.startswith(f"{stem}{key}") and (old.suffix == ".npy" or old.name.endswith(".lock")):
            old.unlink(missing_ok=True)


def _keep_newest(directory: Path, stem: str, keep: int) -> None:
    """Delete all but the `keep` most recently used caches named `stem<key>.*.npy` (a reader that loses the race
    with the deletion generates in memory instead)."""
    used: dict[str, float] = {}
    for p in directory.glob(f"{stem}*.npy"):
        key = p.name[len(stem):].split(".", 1)[0]
        try:
            used[key] = max(used.get(key, 0.0), p.stat().st_mtime)
        except FileNotFoundError:
            continue
    for key in sorted(used, key=used.get, reverse=True)[keep:]:
        for p in directory.glob(f"{stem}{key}.*.npy"):
            p.unlink(missing_ok=True)
