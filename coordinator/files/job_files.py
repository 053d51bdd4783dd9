"""A job's files under DATA_DIR, and their removal with the job, consistent whenever the coordinator dies.

    files = JobFiles(data_dir)
    with files.moved_aside(job_id) as removal:   # the job's directories renamed into DATA_DIR/trash/<job>.<tag>
        store.delete_job(job_id)                 # the records, in one transaction
    removal.files, removal.bytes_freed           # only now are the files gone
    files.recover(job_exists)                    # at start-up: finish or undo a removal a crash interrupted

A job's files live in three directories (coordinator.core lists them): checkpoints/<job>, logs/<job> and
runs/<job>. Deleting a job renames them into one trash entry (each rename is atomic), deletes the records,
and then removes the entry. Should the records not be deleted (an error, or the coordinator killed before
the commit), the entry is moved back: a job that still exists never lacks its files. Should the coordinator
die after the commit, `recover` removes the entry at the next start: a deleted job's files neither outlive
it nor turn up under a new job that takes the same id.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger("gradmesh.files")
KINDS = ("checkpoints", "logs", "runs")   # DATA_DIR/<kind>/<job id>
TRASH = "trash"


@dataclass
class Removal:
    """What removing a job's files took away (filled in when the `moved_aside` block succeeds)."""
    files: int = 0
    bytes_freed: int = 0   # files still linked elsewhere (a resumed job's first checkpoint) free nothing


class JobFiles:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.trash = self.data_dir / TRASH

    @contextlib.contextmanager
    def moved_aside(self, job_id: str) -> Iterator[Removal]:
        """Move the job's directories aside; if the block succeeds remove them, else move them back."""
        entry = self.trash / f"{job_id}.{secrets.token_hex(4)}"
        entry.mkdir(parents=True)
        removal = Removal()
        try:
            for kind in KINDS:
                source = self.data_dir / kind / job_id
                if source.is_dir() and not source.is_symlink():
                    os.rename(source, entry / kind)
            yield removal
        except BaseException:
            self._put_back(entry, job_id)
            raise
        removal.files, removal.bytes_freed = _remove(entry)

    def recover(self, job_exists: Callable[[str], bool]) -> list[str]:
        """Settle the trash entries a crash left: put back those whose job still exists, remove the rest.
        Returns the ids of the jobs whose files were removed."""
        removed = []
        if not self.trash.is_dir():
            return removed
        for entry in sorted(self.trash.iterdir()):
            job_id = entry.name.rpartition(".")[0]
            if not entry.is_dir() or entry.is_symlink() or not job_id:
                continue
            if job_exists(job_id):
                log.warning("job %s was being deleted when the coordinator stopped, and still exists: its files "
                            "are put back", job_id)
                self._put_back(entry, job_id)
            else:
                _remove(entry)
                removed.append(job_id)
        if removed:
            log.warning("removed the files of %d deleted job(s) left by a stop mid-deletion: %s", len(removed),
                        ", ".join(removed[:10]))
        return removed

    def _put_back(self, entry: Path, job_id: str) -> None:
        for kind in KINDS:
            moved, home = entry / kind, self.data_dir / kind / job_id
            if not moved.exists():
                continue
            if home.exists():  # cannot happen while the job exists (nothing else makes these), but never merge
                log.error("cannot put %s back: %s exists; left in %s", moved, home, entry)
                return
            home.parent.mkdir(parents=True, exist_ok=True)
            os.rename(moved, home)
        entry.rmdir()


def _remove(entry: Path) -> tuple[int, int]:
    """Remove a trash entry; (files, bytes freed) of what it held."""
    files = freed = 0
    for root, _dirs, names in os.walk(entry):
        for name in names:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            files += 1
            if st.st_nlink == 1:
                freed += st.st_size
    shutil.rmtree(entry, ignore_errors=True)
    if entry.exists():
        log.error("could not remove all of %s", entry)
    return files, freed
