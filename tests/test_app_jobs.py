"""framepack_native.app.jobs: the web app's persistent job queue, driven by fake runners (plain functions, no model).

Every wait polls a condition with a generous timeout; nothing asserts how long anything took."""
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from framepack_native.app.jobs import (JOB_FORMAT, QUEUE_FILE, QUEUE_FORMAT, VERSION, JobQueue, JobStopped)
from framepack_native.app.params import JobParams

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

def test_jobs_run_one_at_a_time_in_submission_order(tmp_path, queues):
    """Jobs run one at a time (a counter under a lock never exceeds one) in submission order, including jobs
    submitted while others run; each ends done with the runner's frame count in its message, elapsed > 0 and
    started <= completed."""
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


def test_value_error_fails_with_its_first_line(tmp_path, queues):
    """A ValueError from the runner marks the job failed with the error's first line as the message, and the queue
    goes on with the next job."""
    def runner(job, queue):
        if job.params.seed == 1:
            raise ValueError("LoRA x.safetensors does not fit this model\nshape (3, 4) vs (5, 6)")
        return 2

    q = queues(tmp_path, runner)
    bad, good = q.submit(JobParams(seed=1), picture()), q.submit(JobParams(seed=2), picture())
    wait_status(q, good.id, "done")
    failed = q.get(bad.id)
    assert failed.status == "failed" and failed.message == "LoRA x.safetensors does not fit this model"
    assert failed.completed is not None and failed.elapsed > 0


def test_empty_value_error_is_named(tmp_path, queues):
    """A ValueError without a message fails the job with its type name as the message."""
    def runner(job, queue):
        raise ValueError()

    q = queues(tmp_path, runner)
    job = q.submit(JobParams(), picture())
    wait_status(q, job.id, "failed")
    assert q.get(job.id).message == "ValueError"


def test_other_exception_fails_with_its_type(tmp_path, queues):
    """Any other exception marks the job failed with "Type: first line", and the next job still runs."""
    def runner(job, queue):
        if job.params.seed == 1:
            raise RuntimeError("CUDA out of memory\nTried to allocate 2 GiB")
        return 2

    q = queues(tmp_path, runner)
    bad, good = q.submit(JobParams(seed=1), picture()), q.submit(JobParams(seed=2), picture())
    wait_status(q, good.id, "done")
    failed = q.get(bad.id)
    assert failed.status == "failed"
    assert failed.message == "RuntimeError: CUDA out of memory"


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

def test_every_change_is_persisted(tmp_path, queues):
    """queue.json and ID.json follow every change: queued at submit, running when the runner starts, the section
    counts after section_written, done at the end; ID.json carries the server info and the same job fields."""
    entered, release, ran, finish = (threading.Event() for _ in range(4))

    def runner(job, queue):
        entered.set()
        assert release.wait(TIMEOUT)
        queue.section_written(job, 37, 1, 2)
        ran.set()
        assert finish.wait(TIMEOUT)
        return 37

    q = queues(tmp_path, runner, start=False, info={"model": "tiny-test"})
    job = q.submit(JobParams(prompt="persist"), picture())

    def check(expected_status):
        from_queue = queue_file_jobs(tmp_path)[job.id]
        own = read(tmp_path / f"{job.id}.json")
        assert own["format"] == JOB_FORMAT and own["version"] == VERSION and own["model"] == "tiny-test"
        assert {k: own[k] for k in from_queue} == from_queue
        assert from_queue == q.get(job.id).to_json()
        assert from_queue["status"] == expected_status
        return from_queue

    check("queued")
    q.start()
    assert entered.wait(TIMEOUT)
    assert check("running")["started"] is not None
    release.set()
    assert ran.wait(TIMEOUT)
    state = check("running")
    assert (state["frames"], state["sections_done"], state["sections"], state["output"]) == (37, 1, 2,
                                                                                               f"{job.id}.mp4")
    assert q.live[job.id]["video_frames"] == 37
    finish.set()
    wait_status(q, job.id, "done")
    final = check("done")
    assert final["message"] == "" and final["elapsed"] > 0
    wait_for(lambda: job.id not in q.live, "the live state to be dropped")
    assert leftover_temporaries(tmp_path) == []


def test_restart_lists_the_same_jobs(tmp_path, queues):
    """After close, a new JobQueue on the same folder lists the same jobs in the same order with every field the
    same (done, failed, stopped, cancelled and still-queued ones), and changes nothing on disk by loading."""
    def runner(job, queue):
        if job.params.seed == 2:
            raise ValueError("no good")
        if job.params.seed == 3:
            while not queue.should_stop(job):
                time.sleep(0.002)
            raise JobStopped()
        queue.section_written(job, 9, 1, 1)
        return 9

    q1 = queues(tmp_path, runner)
    done = q1.submit(JobParams(seed=1, loras=[["a.safetensors", 0.5]]), picture(), last_image=picture((1, 2, 3)),
                     keyframes=[(1.5, picture((4, 5, 6)))])
    failed = q1.submit(JobParams(seed=2), picture())
    stopped = q1.submit(JobParams(seed=3), picture())
    wait_status(q1, stopped.id, "running")
    cancelled = q1.submit(JobParams(seed=4), picture())
    q1.stop(cancelled.id)
    q1.stop(stopped.id)
    wait_status(q1, stopped.id, "stopped")
    q1.close(timeout=TIMEOUT)
    before = q1.jobs()
    assert [j.status for j in before] == ["done", "failed", "stopped", "cancelled"]
    assert [j.id for j in before] == [done.id, failed.id, stopped.id, cancelled.id]
    text = (tmp_path / QUEUE_FILE).read_text()

    q2 = queues(tmp_path, runner, start=False)
    after = q2.jobs()
    assert after == before
    assert [j.to_json() for j in after] == [j.to_json() for j in before]
    assert (tmp_path / QUEUE_FILE).read_text() == text
    assert leftover_temporaries(tmp_path) == []


def test_queued_jobs_survive_a_restart(tmp_path, queues):
    """Jobs still queued when the queue closes run after the restart, in their order, without resume."""
    q1 = queues(tmp_path, start=False)
    ids = [q1.submit(JobParams(seed=i), picture()).id for i in range(3)]
    q1.close()
    gate = Gate()
    gate.release.set()
    q2 = queues(tmp_path, gate)
    wait_for(lambda: all(status(q2, i) == "done" for i in ids), "every job to be done")
    assert gate.runs == [(i, False) for i in ids]


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

def _set(path, value):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _delete(key):
    def change(data):
        del data[key]
    return change


def _duplicate(data):
    data["jobs"][1] = dict(data["jobs"][0])


DAMAGE = {
    "format": _set(["format"], "something.else"),
    "no format": _delete("format"),
    "version 2": _set(["version"], 2),
    "version text": _set(["version"], "1"),
    "no version": _delete("version"),
    "jobs not a list": _set(["jobs"], {"a": 1}),
    "job not an object": _set(["jobs", 0], "job"),
    "unknown status": _set(["jobs", 0, "status"], "paused"),
    "unknown job field": _set(["jobs", 0, "colour"], "red"),
    "missing id": lambda data: data["jobs"][0].pop("id"),
    "bad id": _set(["jobs", 0, "id"], "../evil"),
    "image outside": _set(["jobs", 0, "inputs", "image"], "../x.png"),
    "image absolute": _set(["jobs", 0, "inputs", "image"], "/etc/passwd"),
    "image climbs out": _set(["jobs", 0, "inputs", "image"], "inputs/../../x.png"),
    "image elsewhere": _set(["jobs", 0, "inputs", "image"], "other/x.png"),
    "no image": _set(["jobs", 0, "inputs", "image"], None),
    "last image outside": _set(["jobs", 0, "inputs", "last_image"], "../x.png"),
    "last image absolute": _set(["jobs", 0, "inputs", "last_image"], "/tmp/x.png"),
    "keyframe absolute": _set(["jobs", 0, "inputs", "keyframes"], [[1.0, "/tmp/x.png"]]),
    "keyframe outside": _set(["jobs", 0, "inputs", "keyframes"], [[1.0, "../x.png"]]),
    "keyframe shape": _set(["jobs", 0, "inputs", "keyframes"], [["inputs/x.png"]]),
    "duplicate ids": _duplicate,
    "bad params": _set(["jobs", 0, "params", "steps"], 0),
    "unknown param": _set(["jobs", 0, "params", "bogus"], 1),
    "created text": _set(["jobs", 0, "created"], "yesterday"),
    "elapsed bool": _set(["jobs", 0, "elapsed"], True),
    "foreign output": _set(["jobs", 0, "output"], "other.mp4"),
}


@pytest.fixture
def saved_queue(tmp_path, queues):
    """A folder with a valid queue.json of two queued jobs (one with a last image and a keyframe)."""
    q = queues(tmp_path, start=False)
    q.submit(JobParams(seed=1), picture(), last_image=picture(), keyframes=[(2.0, picture())])
    q.submit(JobParams(seed=2), picture())
    q.close()
    return tmp_path


def test_saved_queue_loads(saved_queue, queues):
    """The undamaged file of the damage tests loads (so each damage test fails for its damage alone)."""
    assert len(queues(saved_queue, start=False).jobs()) == 2


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_queue_names_the_file(saved_queue, damage):
    """A queue.json damaged in any of these ways is refused at start-up with a ValueError naming the file, and the
    file is left as it was."""
    path = saved_queue / QUEUE_FILE
    data = read(path)
    DAMAGE[damage](data)
    path.write_text(json.dumps(data))
    text = path.read_text()
    with pytest.raises(ValueError) as info:
        JobQueue(saved_queue, done_runner)
    assert str(path) in str(info.value)
    assert path.read_text() == text


@pytest.mark.parametrize("text", ["{not json", "", "[]", "null", '"queue"', "\xff\xfe"])
def test_unreadable_queue_names_the_file(tmp_path, text):
    """A queue.json that is not a JSON object is refused with a ValueError naming the file."""
    path = tmp_path / QUEUE_FILE
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError) as info:
        JobQueue(tmp_path, done_runner)
    assert str(path) in str(info.value)


def test_null_created_names_the_file(saved_queue):
    """A job whose created time is null is refused as a damaged queue.json (ValueError naming the file)."""
    path = saved_queue / QUEUE_FILE
    data = read(path)
    data["jobs"][1]["created"] = None
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as info:
        JobQueue(saved_queue, done_runner)
    assert str(path) in str(info.value)


def test_null_elapsed_names_the_file(saved_queue):
    """A job whose elapsed time is null is refused as a damaged queue.json (ValueError naming the file), rather
    than loaded and left to crash the worker."""
    path = saved_queue / QUEUE_FILE
    data = read(path)
    data["jobs"][0]["elapsed"] = None
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as info:
        JobQueue(saved_queue, done_runner).close()
    assert str(path) in str(info.value)


# ---- submit ---------------------------------------------------------------------------------------------------

def test_submit_writes_pictures_and_job_file(tmp_path, queues):
    """submit writes inputs/ID/image.png, last_image.png and keyframe_N.png (the same pixels), records them as
    relative paths with the keyframe times as floats, and writes ID.json whose params load back equal; nothing runs
    before start."""
    q = queues(tmp_path, start=False, info={"model": "m"})
    params = JobParams(prompt="a dog", seed=3, loras=[["x.safetensors", 0.75]])
    image, last = picture((255, 0, 0)), picture((0, 255, 0), (6, 4))
    keys = [(1, picture((0, 0, 255))), (2.5, picture((9, 9, 9)))]
    job = q.submit(params, image, last_image=last, keyframes=keys)
    assert job.status == "queued" and job.created > 0
    assert job.inputs == {"image": f"inputs/{job.id}/image.png", "last_image": f"inputs/{job.id}/last_image.png",
                          "keyframes": [[1.0, f"inputs/{job.id}/keyframe_0.png"],
                                        [2.5, f"inputs/{job.id}/keyframe_1.png"]]}
    assert all(type(s) is float for s, _ in job.inputs["keyframes"])
    written = [(job.inputs["image"], image), (job.inputs["last_image"], last)]
    written += [(rel, pic) for (_, rel), (_, pic) in zip(job.inputs["keyframes"], keys)]
    for rel, pic in written:
        with Image.open(tmp_path / rel) as saved:
            assert saved.format == "PNG" and saved.size == pic.size
            assert saved.convert("RGB").tobytes() == pic.tobytes()
    assert sorted(p.name for p in (tmp_path / "inputs" / job.id).iterdir()) == [
        "image.png", "keyframe_0.png", "keyframe_1.png", "last_image.png"]
    own = read(tmp_path / f"{job.id}.json")
    assert JobParams.from_json(own["params"]) == params
    assert own["inputs"] == job.inputs and own["status"] == "queued" and own["model"] == "m"
    assert queue_file_jobs(tmp_path)[job.id] == job.to_json()
    assert leftover_temporaries(tmp_path) == []


def test_submit_without_optional_pictures(tmp_path, queues):
    """Without a last image or keyframes only image.png is written, and the inputs say so."""
    q = queues(tmp_path, start=False)
    job = q.submit(JobParams(), picture())
    assert job.inputs == {"image": f"inputs/{job.id}/image.png", "last_image": None, "keyframes": []}
    assert [p.name for p in (tmp_path / "inputs" / job.id).iterdir()] == ["image.png"]


@pytest.mark.parametrize("where", ["image", "last_image", "keyframe"])
def test_submit_failure_leaves_nothing(tmp_path, queues, where):
    """A picture that cannot be saved makes submit raise, with no job queued, no inputs/ID folder, no ID.json and no
    temporary file left behind."""
    q = queues(tmp_path, start=False)
    bad = object()
    kwargs = {"image": bad if where == "image" else picture(),
              "last_image": bad if where == "last_image" else picture(),
              "keyframes": [(1.0, picture()), (2.0, bad)] if where == "keyframe" else ()}
    with pytest.raises(AttributeError):
        q.submit(JobParams(), **kwargs)
    assert q.jobs() == []
    assert list((tmp_path / "inputs").iterdir()) == []
    assert list(tmp_path.glob("*.json")) == []
    assert leftover_temporaries(tmp_path) == []


def test_progress_is_live_only(tmp_path, queues):
    """progress() updates the live state with a rising version (not queue.json), and the live state is dropped
    when the job ends."""
    seen = []
    gate = threading.Event()

    def runner(job, queue):
        queue.progress(job, step=1, steps=4)
        seen.append(dict(queue.live[job.id]))
        queue.progress(job, step=2)
        seen.append(dict(queue.live[job.id]))
        assert gate.wait(TIMEOUT)
        return 1

    q = queues(tmp_path, runner)
    job = q.submit(JobParams(), picture())
    wait_for(lambda: len(seen) == 2, "two progress reports")
    assert seen[0]["step"] == 1 and seen[1]["step"] == 2 and seen[1]["steps"] == 4
    assert seen[1]["version"] > seen[0]["version"]
    assert "step" not in queue_file_jobs(tmp_path)[job.id]
    gate.set()
    wait_status(q, job.id, "done")
    wait_for(lambda: job.id not in q.live, "the live state to be dropped")
