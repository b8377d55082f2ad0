"""The web app's job queue: several jobs, one GPU, run in order, kept on disk so a restart resumes or lists them.

The outputs folder holds
    queue.json          every job: id, status, created / started / completed (Unix seconds), elapsed (seconds run),
                        its parameters and input pictures, its video, frames and a message; rewritten atomically at
                        every change of status and after every section
    ID.mp4              the job's video, replaced (atomically) after every finished section by the whole video so far
    ID.json             every parameter of the job and what came of it, beside the video; the app loads it back
    ID.mp4.state/       the run state while the job is unfinished (framepack_native.run_state): a job the server
                        was running when it stopped (a crash, a kill, a shutdown) is queued again on the next start
                        and resumes after its last finished section
    inputs/ID/          the job's pictures as PNG (image.png, last_image.png, keyframe_N.png)
Every file goes through a temporary name, so nothing half-written is ever there under its own name.

Statuses: queued -> running -> done | stopped (Stop: at the next step; the finished sections stay in ID.mp4) |
failed (the message says why; the finished sections stay) | cancelled (stopped before it started). A stopped or failed
job keeps its run state: `resume(id)` queues it again to continue after its last finished section.
"""
import copy
import dataclasses
import fcntl
import json
import math
import secrets
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Optional

from framepack_native.app.params import JobParams
from framepack_native.cli import save_png
from framepack_native.files import read_json, write_text_atomic

QUEUE_FILE = "queue.json"
LOCK_FILE = ".lock"          # held (flock) by the one server using the folder
QUEUE_FORMAT = "framepack_native.queue"
JOB_FORMAT = "framepack_native.job"
VERSION = 1
MAX_RECOVERIES = 3       # a job found running at start-up this often is failed, not resumed (a crash loop)
STATUSES = ("queued", "running", "done", "stopped", "failed", "cancelled")


class JobStopped(Exception):
    """Raised inside a running job (from its step callback) when Stop was pressed or the server shuts down."""


@dataclasses.dataclass
class Job:
    id: str
    params: JobParams
    inputs: dict                    # {"image": "inputs/ID/image.png", "last_image": path or None, "keyframes": [[s, path]]}
    status: str = "queued"
    created: float = 0.0
    started: Optional[float] = None
    completed: Optional[float] = None
    elapsed: float = 0.0
    output: Optional[str] = None    # "ID.mp4" once a section is written
    frames: int = 0
    sections_done: int = 0
    sections: Optional[int] = None
    message: str = ""
    resume: bool = False            # the next run continues from the job's state (after a restart)
    recoveries: int = 0             # how often a server stopped under it (a crash loop ends at MAX_RECOVERIES)

    def to_json(self):
        out = dataclasses.asdict(self)
        out["params"] = self.params.to_json()
        return out

    @classmethod
    def from_json(cls, data, where):
        """A job from queue.json; ValueError naming `where` and the field for anything malformed."""
        try:
            if not isinstance(data, dict):
                raise ValueError(f"a job must be an object, got {type(data).__name__}")
            fields = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(data) - fields)
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(unknown)}")
            job = cls(**{**data, "params": JobParams.from_json(data.get("params", {}))})
            _check_job_fields(job)
            return job
        except TypeError as e:
            raise ValueError(f"{where}: {e}") from None
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


def _check_job_fields(job):
    if not isinstance(job.id, str) or not job.id or not all(c.isalnum() or c in "-_" for c in job.id):
        raise ValueError(f"id {job.id!r} is not a job id")
    if job.status not in STATUSES:
        raise ValueError(f"status {job.status!r} is not one of {', '.join(STATUSES)}")
    for name in ("created", "elapsed", "started", "completed"):
        value = getattr(job, name)
        if (value is not None or name in ("created", "elapsed")) and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise ValueError(f"{name} must be a number, got {value!r}")
    for name in ("frames", "sections_done", "sections", "recoveries"):
        value = getattr(job, name)
        if (value is not None or name != "sections") and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    if not isinstance(job.message, str) or not isinstance(job.resume, bool):
        raise ValueError("message must be text and resume true or false")
    if not isinstance(job.inputs, dict) or not isinstance(job.inputs.get("image"), str):
        raise ValueError("inputs must name the start image")
    for name in ("image", "last_image"):
        if job.inputs.get(name) is not None:
            _check_relative(job.inputs[name])
    for item in job.inputs.get("keyframes", []):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], str)
                and isinstance(item[0], (int, float)) and not isinstance(item[0], bool) and math.isfinite(item[0])):
            raise ValueError(f"a keyframe must be [seconds, path], got {item!r}")
        _check_relative(item[1])
    if job.output is not None and job.output != f"{job.id}.mp4":
        raise ValueError(f"output {job.output!r} is not the job's own video")


def _check_relative(path):
    """Input pictures live in inputs/ID/ of the outputs folder: a path elsewhere (absolute, ..) is refused."""
    p = Path(path)
    if not isinstance(path, str) or p.is_absolute() or ".." in p.parts or p.parts[:1] != ("inputs",):
        raise ValueError(f"input {path!r} is not a file under inputs/")


def new_job_id(now=None):
    """'YYYYmmdd-HHMMSS-xxxxxx': sorts by creation time, unique in practice (24 random bits)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    return f"{stamp}-{secrets.token_hex(3)}"


class JobQueue:
    """Jobs kept in FOLDER/queue.json, run one at a time in a worker thread by `runner(job, queue)`.

    runner(job, queue) runs the job; inside it `queue.should_stop(job)` says whether
    to raise JobStopped, and queue.progress(job, **fields) / queue.section_written(job, frames, done, sections)
    report what it did. A job found "running" at start-up (the server stopped under it) is queued again with
    resume=True, ahead of the others, so the queue goes on where it was.
    """

    def __init__(self, folder, runner, info=None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.runner, self.info = runner, dict(info or {})
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._closing = False
        self._thread = None
        self.live = {}  # job id -> {"section", "sections", "step", "steps", "preview", "version"}: not persisted
        self._lockfile = open(self.folder / LOCK_FILE, "a")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise ValueError(f"{self.folder}: another framepack-native serve uses this outputs folder "
                             "(one server per folder: its jobs would run twice)") from None
        try:
            self._jobs = self._load()
        except BaseException:
            self.release()
            raise
        recovered = [j for j in self._jobs if j.status == "running"]
        for job in recovered:
            job.recoveries += 1
            if job.recoveries >= MAX_RECOVERIES:  # it took the server down each time: do not start it again
                job.status, job.completed = "failed", time.time()
                job.message = (f"the server stopped during this job {job.recoveries} times; Continue tries again "
                               "from its last finished section")
                continue
            job.status, job.resume = "queued", True
            job.message = "interrupted by a server stop; resumes after its last finished section"
        self._jobs.sort(key=lambda j: j not in recovered)  # stable: otherwise the order queue.json holds
        for job in recovered:
            self._save_job(job)
        if recovered:
            self._save()  # an OSError here is the server's start-up error (one line), not a job's

    # ---- persistence ----------------------------------------------------------------------------------------
    def _load(self):
        path = self.folder / QUEUE_FILE
        if not path.exists():
            return []
        data = read_json(path)  # CheckpointError (a ValueError) naming the file for a damaged one
        if not isinstance(data, dict) or data.get("format") != QUEUE_FORMAT or not isinstance(data.get("jobs"), list):
            raise ValueError(f"{path}: not a framepack_native job queue (format {QUEUE_FORMAT!r} with a jobs list)")
        if data.get("version") != VERSION:
            raise ValueError(f"{path}: queue version {data.get('version')!r}, this app reads version {VERSION}")
        jobs = [Job.from_json(item, f"{path}: job {i}") for i, item in enumerate(data["jobs"])]
        if len({j.id for j in jobs}) != len(jobs):
            raise ValueError(f"{path}: a job id appears twice")
        return jobs

    def _save(self):
        data = {"format": QUEUE_FORMAT, "version": VERSION, "jobs": [j.to_json() for j in self._jobs]}
        write_text_atomic(self.folder / QUEUE_FILE, json.dumps(data, indent=1))

    def _persist(self, job):
        """ID.json and queue.json after a change of a job's status; a write that fails (a full disk) is reported on
        stderr and retried at the next change: the worker and the page go on, the state in memory stays right."""
        try:
            self._save_job(job)
            self._save()
        except OSError as e:
            print(f"warning: could not write the job queue in {self.folder}: {e}", file=sys.stderr, flush=True)

    def _save_job(self, job):
        """ID.json beside the video: every parameter, the pictures, the server's model and what came of the job."""
        data = {**self.info, **job.to_json(), "format": JOB_FORMAT, "version": VERSION}
        write_text_atomic(self.folder / f"{job.id}.json", json.dumps(data, indent=1))

    # ---- what the page calls ----------------------------------------------------------------------------------
    def submit(self, params, image, last_image=None, keyframes=()):
        """Queue a job of `params` with PIL pictures (keyframes: [(seconds, picture)]); returns the Job.
        Its pictures and ID.json are written before it enters the queue."""
        job_id = new_job_id()
        folder = self.folder / "inputs" / job_id
        folder.mkdir(parents=True)
        inputs = {"image": f"inputs/{job_id}/image.png", "last_image": None, "keyframes": []}
        try:
            save_png(self.folder / inputs["image"], image)
            if last_image is not None:
                inputs["last_image"] = f"inputs/{job_id}/last_image.png"
                save_png(self.folder / inputs["last_image"], last_image)
            for i, (seconds, picture) in enumerate(keyframes):
                rel = f"inputs/{job_id}/keyframe_{i}.png"
                save_png(self.folder / rel, picture)
                inputs["keyframes"].append([float(seconds), rel])
        except BaseException:  # a full disk: no job, and no pictures of it left behind
            shutil.rmtree(folder, ignore_errors=True)
            raise
        job = Job(id=job_id, params=params, inputs=inputs, created=time.time())
        with self._lock:
            self._save_job(job)
            self._jobs.append(job)
            self._save()
            self._lock.notify_all()
            return copy.deepcopy(job)

    def jobs(self):
        """Copies of every job, oldest first (a restart's resumed job first)."""
        with self._lock:
            return [copy.deepcopy(j) for j in self._jobs]

    def get(self, job_id):
        with self._lock:
            for j in self._jobs:
                if j.id == job_id:
                    return copy.deepcopy(j)
        return None

    def running(self):
        with self._lock:
            return next((copy.deepcopy(j) for j in self._jobs if j.status == "running"), None)

    def live_state(self, job_id):
        """A copy of what the running job reported last (phase, section, step, preview, version), or {}."""
        with self._lock:
            return dict(self.live.get(job_id, {}))

    def stop(self, job_id=None):
        """Stop the running job (job_id None or its id) at its next step, or cancel a queued one; False if there
        was nothing to stop."""
        with self._lock:
            for j in self._jobs:
                if (job_id is None and j.status == "running") or (job_id == j.id and j.status in ("running", "queued")):
                    if j.status == "running":
                        self._stop.set()
                    elif j.resume:  # a job that was to continue: back to stopped, its sections and state kept
                        j.status, j.resume, j.completed = "stopped", False, time.time()
                        j.message = "stopped before it continued; its finished sections stay"
                        self._persist(j)
                    else:
                        j.status, j.completed, j.message = "cancelled", time.time(), "cancelled before it started"
                        self._persist(j)
                    return True
        return False

    def resume(self, job_id):
        """Queue a stopped or failed job again to continue after its last finished section (its run state is kept
        until the job is done); False for another job or status, or when it left no state."""
        with self._lock:
            j = next((j for j in self._jobs if j.id == job_id), None)
            if j is None or j.status not in ("stopped", "failed"):
                return False
            if not (self.folder / f"{j.id}.mp4.state" / "state.json").is_file():
                return False
            j.status, j.resume, j.completed = "queued", True, None
            j.message = "continues after its last finished section"
            self._jobs.remove(j)
            self._jobs.append(j)  # behind the jobs already waiting
            self._persist(j)
            self._lock.notify_all()
            return True

    # ---- what the runner calls ----------------------------------------------------------------------------------
    def should_stop(self, job):
        return self._stop.is_set()

    def progress(self, job, **fields):
        with self._lock:
            live = self.live.setdefault(job.id, {"version": 0})
            live.update(fields)
            live["version"] += 1

    def section_written(self, job, frames, done, sections):
        with self._lock:
            j = self._find(job.id)
            j.output, j.frames, j.sections_done, j.sections = f"{job.id}.mp4", frames, done, sections
            self._save_job(j)
            self._save()
        self.progress(job, video_frames=frames)

    def _find(self, job_id):
        return next(j for j in self._jobs if j.id == job_id)

    # ---- the worker ------------------------------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._work, name="framepack-jobs", daemon=True)
        self._thread.start()

    def close(self, timeout=60.0):
        """Stop the running job at its next step (it is queued again, resuming on the next start), end the worker
        and let another server use the folder."""
        with self._lock:
            self._closing = True
            self._stop.set()
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self.release()

    def release(self):
        if not self._lockfile.closed:
            self._lockfile.close()  # the flock goes with the file

    def __del__(self):
        if hasattr(self, "_lockfile"):  # not when __init__ failed before opening it
            self.release()

    def _next(self):
        with self._lock:
            while not self._closing:
                job = next((j for j in self._jobs if j.status == "queued"), None)
                if job is not None:
                    self._stop.clear()
                    job.status, job.started, job.message = "running", time.time(), ""
                    self._persist(job)
                    return copy.deepcopy(job)
                self._lock.wait()
        return None

    def _work(self):
        while True:
            job = self._next()
            if job is None:
                return
            t0 = time.monotonic()
            status, message, resume = "done", "", False
            try:
                self.runner(job, self)
            except JobStopped:
                if self._closing:
                    status, message, resume = "queued", "stopped by a server shutdown; resumes on the next start", True
                else:
                    status, message = "stopped", "stopped by the user"
            except ValueError as e:  # bad input the checks before the queue could not see (a LoRA that does not fit)
                status, message = "failed", str(e).splitlines()[0] if str(e) else type(e).__name__
            except Exception as e:  # noqa: BLE001 - a bug or an out-of-memory: logged, the job marked, the queue goes on
                traceback.print_exc()
                status, message = "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            with self._lock:
                j = self._find(job.id)
                j.elapsed += time.monotonic() - t0
                j.status, j.resume = status, resume
                if status != "queued":
                    j.completed = time.time()
                else:  # stopped under a server shutdown: first in line on the next start
                    self._jobs.remove(j)
                    self._jobs.insert(0, j)
                kept = f"; {j.frames} frames of {j.sections_done} finished section(s) kept" if (
                    status in ("stopped", "failed") and j.frames) else ""
                j.message = message + kept
                self._persist(j)
                self.live.pop(job.id, None)
            finished = getattr(self.runner, "finished", None)
            if status == "done" and finished is not None:
                try:  # after "done" is on disk: a crash before it leaves a state to resume, not a lost video
                    finished(j, self)
                except OSError as e:
                    print(f"warning: {e}", file=sys.stderr, flush=True)
