"""The job manager: one job at a time, a bounded queue, cancel, failures reported."""

import threading
import time
from pathlib import Path

import pytest

from hierdemo.jobs import JobManager
from hierdemo.training import TrainConfig, TrainingCancelled


def wait_for(predicate, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_one_at_a_time_in_order_with_positions_and_cancel():
    release = threading.Event()
    running, order = [], []

    def runner(job):
        running.append(job.id)
        assert len(running) - len(order) == 1  # never two at once
        while not release.is_set():
            if job.cancel.is_set():
                order.append(job.id)
                raise TrainingCancelled()
            time.sleep(0.01)
        order.append(job.id)

    jobs = JobManager(runner, max_queue=2)
    cleaned = []
    a = jobs.submit("a", Path("."), Path("a"), TrainConfig())
    wait_for(lambda: a.status == "running")
    b = jobs.submit("b", Path("."), Path("b"), TrainConfig())
    c = jobs.submit("c", Path("."), Path("c"), TrainConfig(), cleanup=lambda: cleaned.append("c"))
    assert (jobs.position(b), jobs.position(c)) == (1, 2)
    with pytest.raises(RuntimeError, match="busy"):
        jobs.submit("d", Path("."), Path("d"), TrainConfig())
    assert jobs.cancel(c.id) and c.status == "cancelled" and cleaned == ["c"]
    assert jobs.cancel(a.id)
    wait_for(lambda: a.status == "cancelled")
    release.set()
    wait_for(lambda: b.status == "done")
    assert order == [a.id, b.id] and not jobs.busy() and jobs.latest() is c
    assert not jobs.cancel(b.id)  # finished jobs cannot be cancelled


def test_failure_is_reported_and_worker_survives():
    def runner(job):
        if job.name == "bad":
            raise ValueError("only one class has images")

    jobs = JobManager(runner)
    bad = jobs.submit("bad", Path("."), Path("x"), TrainConfig())
    good = jobs.submit("good", Path("."), Path("y"), TrainConfig())
    wait_for(lambda: good.status == "done")
    assert bad.status == "failed" and "only one class" in bad.error and "failed" in bad.log[0]


def test_progress_events_update_job():
    from hierdemo.jobs import Job

    job = Job(1, "x", Path("."), Path("."), TrainConfig())
    job.on_event({"event": "step", "step": 5, "total_steps": 10, "loss": 1.5})
    job.on_event({"event": "epoch", "epoch": 1, "train_loss": 1.2, "fpa": 0.5, "tice": 0.1})
    assert job.progress == 0.5 and job.steps == [(5, 1.5)] and "FPA 0.500" in job.log[-1]
