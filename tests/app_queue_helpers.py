"""Shared by the job-queue tests (test_app_jobs.py, test_app_queue_files.py): fake runners, polling waits, the
queue fixture that closes every JobQueue it made."""
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from framepack_native.app.jobs import QUEUE_FILE, QUEUE_FORMAT, VERSION, JobQueue, JobStopped

TIMEOUT = 30.0



def wait_for(condition, what="the condition"):
    """Poll condition() until it is true; fail the test after TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def picture(color=(10, 20, 30), size=(8, 8)):
    return Image.new("RGB", size, color)


def status(queue, job_id):
    return queue.get(job_id).status


def wait_status(queue, job_id, wanted):
    wait_for(lambda: status(queue, job_id) == wanted, f"job {job_id} to be {wanted}")


def read(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def queue_file_jobs(folder):
    """queue.json's jobs by id."""
    data = read(Path(folder) / QUEUE_FILE)
    assert data["format"] == QUEUE_FORMAT and data["version"] == VERSION
    return {j["id"]: j for j in data["jobs"]}


def leftover_temporaries(folder):
    return [p for p in Path(folder).rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


def done_runner(job, queue):
    return 5


@pytest.fixture
def queues():
    """Make JobQueues that are all closed when the test ends (so no worker outlives it)."""
    made = []

    def make(folder, runner=done_runner, start=True, **kwargs):
        q = JobQueue(folder, runner, **kwargs)
        made.append(q)
        if start:
            q.start()
        return q

    yield make
    for q in made:
        q.close(timeout=TIMEOUT)


class Gate:
    """A runner that records each run and blocks until released (or until the queue says stop, then JobStopped)."""

    def __init__(self, frames=3):
        self.frames = frames
        self.runs = []              # (job id, job.resume) in the order the runner was called
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, job, queue):
        self.runs.append((job.id, job.resume))
        self.entered.set()
        while not self.release.is_set():
            if queue.should_stop(job):
                raise JobStopped()
            time.sleep(0.002)
        return self.frames


# ---- order and statuses ---------------------------------------------------------------------------------------
