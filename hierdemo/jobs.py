"""Background training jobs: one runs at a time on a worker thread, others wait in a bounded queue."""

from __future__ import annotations

import contextlib
import gc
import itertools
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .training import TrainConfig, TrainingCancelled, train


@dataclass
class Job:
    id: int
    name: str
    data_dir: Path
    out_dir: Path
    config: TrainConfig
    status: str = "queued"
    stage: str = "waiting"
    progress: float = 0.0
    steps: list[tuple[int, float]] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    zero_shot: dict | None = None
    metrics: dict | None = None
    error: str = ""
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    cleanup: Callable[[], None] | None = field(default=None, repr=False)

    def on_event(self, event: dict) -> None:
        """Progress callback from :func:`hierdemo.training.train`."""
        kind = event["event"]
        if kind == "stage":
            self.stage = event["stage"]
            self.log.append(event["stage"] + (f": {event['report']}" if "report" in event else ""))
        elif kind == "features":
            self.stage = f"{event['stage']} {event['done']}/{event['total']}"
        elif kind == "step":
            self.steps.append((event["step"], event["loss"]))
            self.progress = event["step"] / event["total_steps"]
        elif kind == "zero_shot":
            self.zero_shot = event["metrics"]
            self.log.append(f"zero-shot: FPA {self.zero_shot['fpa']:.3f}, TICE {self.zero_shot['tice']:.3f}")
        elif kind == "epoch":
            self.epochs.append(event)
            self.log.append(f"epoch {event['epoch']}: loss {event['train_loss']:.3f}, FPA {event['fpa']:.3f}, TICE {event['tice']:.3f}")
        elif kind == "done":
            self.metrics = event["metrics"]


class JobManager:
    """FIFO of training jobs run one at a time on a daemon worker thread."""

    def __init__(self, runner: Callable[[Job], None] | None = None, max_queue: int = 4):
        self.runner = runner
        self.max_queue = max_queue
        self.jobs: dict[int, Job] = {}
        self.queue: deque[Job] = deque()
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)
        self.ids = itertools.count(1)
        self.current: Job | None = None
        self.listeners: list[Callable[[Job], None]] = []
        threading.Thread(target=self._work, daemon=True, name="hierdemo-jobs").start()

    def submit(self, name: str, data_dir: Path, out_dir: Path, config: TrainConfig, cleanup: Callable[[], None] | None = None) -> Job:
        """Queue a job; raises ``RuntimeError`` when the queue is full."""
        with self.lock:
            if len(self.queue) >= self.max_queue:
                raise RuntimeError(f"the server is busy: {len(self.queue)} jobs are already waiting, try again later")
            job = Job(next(self.ids), name, data_dir, out_dir, config, cleanup=cleanup)
            self.jobs[job.id] = job
            self.queue.append(job)
            self.wakeup.notify()
        return job

    def position(self, job: Job) -> int:
        """1-based place in the waiting line, 0 when not waiting."""
        with self.lock:
            return next((i + 1 for i, j in enumerate(self.queue) if j is job), 0)

    def cancel(self, job_id: int) -> bool:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.status not in ("queued", "running"):
                return False
            job.cancel.set()
            if job in self.queue:
                self.queue.remove(job)
                self._finish(job, "cancelled", "")
        return True

    def latest(self) -> Job | None:
        with self.lock:
            return max(self.jobs.values(), key=lambda j: j.id, default=None)

    def busy(self) -> bool:
        with self.lock:
            return self.current is not None or bool(self.queue)

    def _finish(self, job: Job, status: str, error: str) -> None:
        job.status, job.error, job.finished = status, error, time.time()
        job.stage = status
        if job.cleanup:
            with contextlib.suppress(Exception):
                job.cleanup()
        for listener in self.listeners:
            listener(job)

    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.queue:
                    self.wakeup.wait()
                job = self.current = self.queue.popleft()
                job.status = "running"
            status, error = "done", ""
            try:
                (self.runner or default_runner)(job)
            except TrainingCancelled:
                status = "cancelled"
            except Exception as exc:  # reported in the UI; the worker keeps serving
                status, error = "failed", f"{type(exc).__name__}: {exc}"
                job.log.append("failed: " + error)
                job.log.append(traceback.format_exc(limit=2).splitlines()[-1])
            with self.lock:
                self.current = None
                self._finish(job, status, error)
            gc.collect()


def default_runner(job: Job, backbone=None) -> None:
    train(job.data_dir, job.out_dir, job.config, backbone=backbone, progress=job.on_event, cancel=job.cancel)
