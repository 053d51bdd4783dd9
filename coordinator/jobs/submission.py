"""The checks a new job goes through before it is stored: SubmitJob, RegisterRun and ResumeJob.

    checks = SubmissionChecks(store, limits=limits, total_slots=4, data_roots=[Path.cwd()], memory_per_slot=0)
    labels, raw = checks.request(spec_text, job_id, labels, workers)   # sizes, id, labels, the spec parsed
    spec = checks.runnable_spec(raw, workers)     # dataset under a data root, fits the slots and the caps
    checks.check_queue()                          # ResourceExhausted (kind "queue") when the queue is full
    new_id = job_id or new_job_id(spec.name)      # "<slug of the name>-<8 hex digits>"

They enforce coordinator.access.limits (the spec's size and depth, labels, the queue) and, through
coordinator.access.footprint, a rank's memory, the job's metric points and its checkpoints. Every refusal is an
InvalidArgument naming the field (or a ResourceExhausted for the queue), so a client can point at it.
Creating the job, and holding the queue's count and the insert together, is coordinator.jobs.operations' part.
"""
from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Mapping, Sequence

from coordinator.access import footprint, validate
from coordinator.errors import InvalidArgument, ResourceExhausted
from coordinator.access.limits import Limits
from coordinator.states import JobState
from coordinator.store.store import Store
from worker.spec import JobSpec, SpecError, load_raw, parse_spec

KIND_QUEUE = "queue"  # a ResourceExhausted about the queue of jobs


def new_job_id(name: str) -> str:
    """A fresh id for a job submitted without one: its name's slug and 8 random hex digits."""
    return f"{_slug(name)}-{secrets.token_hex(4)}"


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or "job"


class SubmissionChecks:
    def __init__(self, store: Store, *, limits: Limits, total_slots: int, data_roots: Sequence[Path],
                 memory_per_slot: int = 0):
        self.store = store
        self.limits = limits
        self.total_slots = total_slots
        self.data_roots = [Path(r) for r in data_roots]
        self.memory_per_slot = memory_per_slot  # bytes a rank may use; 0 = not checked

    def request(self, spec_text: str, job_id: str, labels: Mapping[str, str] | None,
                workers: int) -> tuple[dict[str, str], dict]:
        """The checks SubmitJob and RegisterRun share: sizes, id, labels, workers, and the spec parsed (its
        canonical dict). Returns the validated labels and that dict."""
        if not spec_text.strip():
            raise InvalidArgument("spec", "must not be empty (send the TOML or JSON text of a job spec)")
        size = len(spec_text.encode("utf-8", "surrogatepass"))
        if size > self.limits.spec_bytes:
            raise InvalidArgument("spec", f"is {size} bytes; this coordinator takes at most {self.limits.spec_bytes} "
                                          "(--max-spec-bytes)")
        if job_id:
            validate.job_id(job_id)
        checked_labels = validate.labels(labels or {}, self.limits)
        validate.non_negative(workers, "workers")
        try:
            raw = load_raw(spec_text)
            depth = validate.nesting_depth(raw)
            if depth > self.limits.spec_depth:
                raise SpecError("file", f"nested {depth} deep; at most {self.limits.spec_depth} (--max-spec-depth)")
            return checked_labels, parse_spec(raw).to_dict()
        except SpecError as err:
            # exactly str(SpecError) (parse errors name the field "file"), as clients parse the field from it
            raise InvalidArgument(err.field, err.reason) from None

    def runnable_spec(self, raw: dict, workers: int) -> JobSpec:
        """The spec with its workers override, its dataset path made absolute under a data root, validated,
        and checked to fit this coordinator's slots."""
        try:
            if workers:
                raw["workers"] = workers
            spec = parse_spec(raw)
            if spec.source_is_path:
                raw["data"]["source"] = str(validate.dataset_path(spec.data.source, self.data_roots))
                if spec.data.labels:  # an IDX images file's labels file, held to the same roots
                    raw["data"]["labels"] = str(validate.dataset_path(spec.data.labels, self.data_roots))
                spec = parse_spec(raw)
        except SpecError as err:
            raise InvalidArgument(err.field, err.reason) from None
        if spec.workers > self.total_slots:
            raise InvalidArgument("workers", f"the job needs {spec.workers} worker slots but this coordinator has "
                                             f"{self.total_slots} in all")
        self.check_size(spec)
        return spec

    def registered_spec(self, raw: dict, workers: int) -> JobSpec:
        """The spec of a run its user launched, with its workers override, validated. Its dataset is read where
        it runs: neither held to the data roots nor, when it is a path, sized; nor its workers to the slots."""
        try:
            if workers:
                raw["workers"] = workers
            spec = parse_spec(raw)
        except SpecError as err:
            raise InvalidArgument(err.field, err.reason) from None
        if not spec.source_is_path:
            self.check_size(spec)
        return spec

    def check_size(self, spec: JobSpec) -> None:
        """Refuse a job that cannot fit a slot's memory, or would store more points or checkpoints than a job may."""
        dataset = Path(spec.data.source) if spec.source_is_path else None
        need = footprint.rank_memory(spec, dataset)
        if self.memory_per_slot and need.total > self.memory_per_slot:
            raise InvalidArgument("model.layers", f"the job needs {need.describe()}; this coordinator allows "
                                                  f"{footprint.human(self.memory_per_slot)} per rank "
                                                  "(--memory-per-slot): use smaller layers, a smaller batch per "
                                                  "rank or less data")
        points = footprint.metric_points(spec, footprint.train_rows(spec, dataset))
        cap = self.limits.points_per_job
        if points is not None and points > cap:
            steps = footprint.total_steps(spec, footprint.train_rows(spec, dataset)) or 0
            raise InvalidArgument("train.eval_every", f"the job would report {points} metric points ({steps} steps, "
                                                      f"one every {spec.train.eval_every}); this coordinator keeps at "
                                                      f"most {cap} per job (--max-points-per-job): set eval_every to "
                                                      f"at least {-(-steps // (cap - 1))}")
        keep = self.limits.checkpoints_per_job - 2
        if spec.checkpoint.keep_last > keep:
            raise InvalidArgument("checkpoint.keep_last", f"at most {keep} on this coordinator (it keeps "
                                                          f"{self.limits.checkpoints_per_job} checkpoints per job, "
                                                          "--max-checkpoints-per-job, with the best and the final)")

    def check_queue(self) -> None:
        """Refuse a new queued job when the queue holds the most this coordinator takes (--max-queued-jobs)."""
        queued = self.store.count_jobs(JobState.QUEUED)
        if queued >= self.limits.queued_jobs:
            raise ResourceExhausted(f"jobs: {queued} jobs are queued, the most this coordinator takes "
                                    "(--max-queued-jobs); submit again when some have started", kind=KIND_QUEUE)
