"""framepack_native.app.jobs, on disk: every change lands in queue.json and ID.json, a restart lists the same jobs,
damaged queue files are refused naming the file, submit writes the pictures and leaves nothing when it fails."""
import json
import threading
import time

import pytest
from PIL import Image

from framepack_native.app.jobs import JOB_FORMAT, QUEUE_FILE, VERSION, JobQueue, JobStopped
from framepack_native.app.params import JobParams
from tests.app_queue_helpers import (TIMEOUT, Gate, done_runner, leftover_temporaries, picture,
                                     queue_file_jobs, queues, read, status, wait_for, wait_status)  # noqa: F401 - queues: a fixture


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
