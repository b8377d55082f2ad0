"""framepack_native.app.jobs, the worker: jobs run one at a time in order; failed / stopped / cancelled; a job the
server stopped under resumes first on the next start. Fake runners (plain functions, no model); every wait polls a
condition with a generous timeout, nothing asserts how long anything took. queue.json and the job files:
test_app_queue_files.py."""
import json
import threading
import time

import pytest

from framepack_native.app.jobs import QUEUE_FILE
from framepack_native.app.params import JobParams
from tests.app_queue_helpers import (TIMEOUT, Gate, leftover_temporaries, picture, queue_file_jobs,
                                     queues, read, status, wait_for, wait_status)  # noqa: F401 - queues: a fixture


def test_jobs_run_one_at_a_time_in_submission_order(tmp_path, queues):
    """Jobs run one at a time (a counter under a lock never exceeds one) in submission order, including jobs
    submitted while others run; each ends done with an empty message, elapsed > 0 and started <= completed."""
    lock = threading.Lock()
    active, overlaps, order = [0], [], []

    def runner(job, queue):
        with lock:
            active[0] += 1
            if active[0] != 1:
                overlaps.append(job.id)
            order.append(job.id)
        time.sleep(0.003)   # room for a second worker to overlap, if there were one
        with lock:
            active[0] -= 1
        return 11

    q = queues(tmp_path, runner, start=False)
    ids = [q.submit(JobParams(seed=i), picture()).id for i in range(3)]
    q.start()
    ids += [q.submit(JobParams(seed=10 + i), picture()).id for i in range(3)]
    wait_for(lambda: all(status(q, i) == "done" for i in ids), "every job to be done")
    assert order == ids and overlaps == []
    assert [j.id for j in q.jobs()] == ids
    for j in q.jobs():
        assert j.message == "" and j.elapsed > 0 and j.resume is False
        assert j.started is not None and j.created <= j.started <= j.completed
    assert q.running() is None


@pytest.mark.parametrize("error, message", [
    (ValueError("LoRA x.safetensors does not fit this model\nshape (3, 4) vs (5, 6)"),
     "LoRA x.safetensors does not fit this model"),                 # bad input: its first line
    (RuntimeError("CUDA out of memory\nTried to allocate 2 GiB"), "RuntimeError: CUDA out of memory"),  # a bug, OOM
])
def test_a_failing_job_is_named_and_the_queue_goes_on(tmp_path, queues, error, message):
    """A ValueError marks the job failed with its first line as the message, any other exception with "Type: first
    line"; the next job still runs."""
    def runner(job, queue):
        if job.params.seed == 1:
            raise error
        return 2

    q = queues(tmp_path, runner)
    bad, good = q.submit(JobParams(seed=1), picture()), q.submit(JobParams(seed=2), picture())
    wait_status(q, good.id, "done")
    failed = q.get(bad.id)
    assert failed.status == "failed" and failed.message == message
    assert failed.completed is not None and failed.elapsed > 0


def test_empty_value_error_is_named(tmp_path, queues):
    """A ValueError without a message fails the job with its type name as the message."""
    def runner(job, queue):
        raise ValueError()

    q = queues(tmp_path, runner)
    job = q.submit(JobParams(), picture())
    wait_status(q, job.id, "failed")
    assert q.get(job.id).message == "ValueError"


def test_failed_job_keeps_its_sections(tmp_path, queues):
    """A job that fails after writing sections says in its message how many frames were kept."""
    def runner(job, queue):
        queue.section_written(job, 33, 1, 4)
        raise ValueError("bad")

    q = queues(tmp_path, runner)
    job = q.submit(JobParams(), picture())
    wait_status(q, job.id, "failed")
    j = q.get(job.id)
    assert j.message.startswith("bad; ") and "33 frames" in j.message and j.frames == 33


@pytest.mark.parametrize("by_id", [False, True])
def test_stop_running_job(tmp_path, queues, by_id):
    """stop() (or stop(id)) on a running job makes should_stop true inside the runner; its JobStopped marks the job
    stopped by the user (not resumable), and the next job starts with should_stop false and runs to done."""
    gate = Gate()
    seen = []

    def runner(job, queue):
        if job.params.seed == 2:
            seen.append(queue.should_stop(job))
            return 1
        return gate(job, queue)

    q = queues(tmp_path, runner)
    first, second = q.submit(JobParams(seed=1), picture()), q.submit(JobParams(seed=2), picture())
    assert gate.entered.wait(TIMEOUT)
    assert status(q, first.id) == "running" and q.running().id == first.id
    assert q.stop(first.id if by_id else None) is True
    wait_status(q, second.id, "done")
    j = q.get(first.id)
    assert j.status == "stopped" and j.message == "stopped by the user" and j.resume is False
    assert j.completed is not None and j.elapsed > 0
    assert seen == [False]
    assert queue_file_jobs(tmp_path)[first.id]["status"] == "stopped"
    assert read(tmp_path / f"{first.id}.json")["status"] == "stopped"


def test_cancel_queued_job(tmp_path, queues):
    """stop(id) on a queued job cancels it: it is marked cancelled at once (queue.json and ID.json) and never runs,
    while the jobs before and after it do."""
    gate = Gate()
    q = queues(tmp_path, gate)
    first = q.submit(JobParams(seed=1), picture())
    assert gate.entered.wait(TIMEOUT)
    second = q.submit(JobParams(seed=2), picture())
    third = q.submit(JobParams(seed=3), picture())
    assert q.stop(second.id) is True
    j = q.get(second.id)
    assert j.status == "cancelled" and j.completed is not None and j.started is None
    assert queue_file_jobs(tmp_path)[second.id]["status"] == "cancelled"
    assert read(tmp_path / f"{second.id}.json")["status"] == "cancelled"
    gate.release.set()
    wait_status(q, third.id, "done")
    assert [run[0] for run in gate.runs] == [first.id, third.id]
    assert status(q, first.id) == "done" and status(q, second.id) == "cancelled"
    assert q.get(second.id).elapsed == 0


def test_stop_with_nothing_to_stop(tmp_path, queues):
    """stop() is False with nothing running, for an unknown id, and for a finished (done or cancelled) job; it
    changes none of them."""
    q = queues(tmp_path, start=False)
    job = q.submit(JobParams(), picture())
    assert q.stop() is False and q.stop("no-such-job") is False
    assert q.stop(job.id) is True and q.stop(job.id) is False
    assert status(q, job.id) == "cancelled"
    q.start()
    done = q.submit(JobParams(), picture())
    wait_status(q, done.id, "done")
    assert q.stop(done.id) is False and q.stop() is False
    assert status(q, done.id) == "done" and status(q, job.id) == "cancelled"


# ---- persistence ----------------------------------------------------------------------------------------------

def test_running_job_is_resumed_first(tmp_path, queues):
    """A job left "running" in queue.json (the server died under it) is queued again with resume=True, ahead of
    older queued jobs, written so to queue.json at start-up; the runner sees job.resume True for it only, and
    resume is cleared once it is done."""
    q1 = queues(tmp_path, start=False)
    ids = [q1.submit(JobParams(seed=i), picture()).id for i in range(3)]
    q1.close()
    path = tmp_path / QUEUE_FILE
    data = read(path)
    data["jobs"][2]["status"] = "running"
    data["jobs"][2]["started"] = data["jobs"][2]["created"]
    path.write_text(json.dumps(data))

    gate = Gate()
    q2 = queues(tmp_path, gate, start=False)
    assert [j.id for j in q2.jobs()] == [ids[2], ids[0], ids[1]]
    resumed = q2.get(ids[2])
    assert resumed.status == "queued" and resumed.resume is True and resumed.message
    on_disk = queue_file_jobs(tmp_path)
    assert on_disk[ids[2]]["status"] == "queued" and on_disk[ids[2]]["resume"] is True
    assert [j["id"] for j in read(path)["jobs"]] == [ids[2], ids[0], ids[1]]
    gate.release.set()
    q2.start()
    wait_for(lambda: all(status(q2, i) == "done" for i in ids), "every job to be done")
    assert gate.runs == [(ids[2], True), (ids[0], False), (ids[1], False)]
    assert all(j.resume is False for j in q2.jobs())


def test_a_job_that_keeps_stopping_the_server_is_failed(tmp_path, queues):
    """A job found "running" at start-up for the MAX_RECOVERIES-th time is failed, not resumed (a crash loop ends);
    the count goes up by one per start that finds it running."""
    from framepack_native.app.jobs import MAX_RECOVERIES
    q1 = queues(tmp_path, start=False)
    job_id = q1.submit(JobParams(), picture()).id
    q1.close()
    path = tmp_path / QUEUE_FILE
    for start in range(1, MAX_RECOVERIES + 1):
        data = read(path)
        data["jobs"][0]["status"] = "running"
        path.write_text(json.dumps(data))
        q = queues(tmp_path, start=False)
        job = q.get(job_id)
        assert job.recoveries == start
        assert job.status == ("failed" if start == MAX_RECOVERIES else "queued"), (start, job)
        q.close()
    assert "stopped during this job" in read(path)["jobs"][0]["message"]


def test_close_while_running_requeues_with_resume(tmp_path, queues):
    """close() while a job runs stops it through should_stop; the job goes back to queued with resume=True (no
    completed time, elapsed kept), the next queued job does not start, and the next start resumes it first."""
    gate = Gate()
    q1 = queues(tmp_path, gate)
    first = q1.submit(JobParams(seed=1), picture())
    assert gate.entered.wait(TIMEOUT)
    second = q1.submit(JobParams(seed=2), picture())
    q1.close(timeout=TIMEOUT)
    j = q1.get(first.id)
    assert j.status == "queued" and j.resume is True and j.completed is None and j.elapsed > 0
    assert "shutdown" in j.message
    assert status(q1, second.id) == "queued" and gate.runs == [(first.id, False)]
    on_disk = queue_file_jobs(tmp_path)[first.id]
    assert on_disk["status"] == "queued" and on_disk["resume"] is True
    assert read(tmp_path / f"{first.id}.json")["resume"] is True

    gate2 = Gate()
    gate2.release.set()
    q2 = queues(tmp_path, gate2)
    wait_for(lambda: status(q2, second.id) == "done", "the second job to be done")
    assert gate2.runs == [(first.id, True), (second.id, False)]
    assert q2.get(first.id).elapsed > j.elapsed
    assert leftover_temporaries(tmp_path) == []


# ---- damaged queue.json ---------------------------------------------------------------------------------------

