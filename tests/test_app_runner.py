"""The web app's runner with the demo model, without a browser: a job gives exactly the frames of the pipeline's own
call with the same arguments (every section's mp4 too); Stop keeps the finished sections, the frames the
uninterrupted run had at that section; a job the server stopped under resumes on the next start with the frames of a
run never stopped; a LoRA is applied to its job only and removed after it bit for bit; bad jobs are refused before
anything is written. The frames compared are those handed to the encoder (libx264 need not give identical bytes)."""
import time

import numpy as np
import PIL.Image
import pytest
import torch

import framepack_native.video as video
from framepack_native.app.jobs import JobQueue
from framepack_native.app.params import JobParams
from framepack_native.app.runner import DEMO_SIZE, DEMO_WEIGHTS_SEED, AppModel, Runner, check_job
from framepack_native.demo import demo_image, demo_pipeline
from tests.reference import lora as ref_lora

PARAMS = JobParams(prompt="waves roll in", seconds=1.0, window=2, steps=3, cache="none", seed=7)  # 4 sections


@pytest.fixture
def encoded(monkeypatch):
    """{path name: [frames handed to write_mp4, ...]}, recording every write of the runs in the test."""
    seen = {}
    real = video.write_mp4

    def write_mp4(path, frames, **kw):
        seen.setdefault(path.name, []).append(video.to_uint8_frames(frames).copy())
        return real(path, frames, **kw)
    monkeypatch.setattr(video, "write_mp4", write_mp4)
    return seen


def reference(params, image, **extra):
    """The pipeline's own run of these settings: (final uint8 frames (F, H, W, 3), [frames after each section])."""
    pipe = demo_pipeline(seed=DEMO_WEIGHTS_SEED)
    sections = []

    def callback(e):
        if e["kind"] == "section":
            sections.append(e["video"]()[0].permute(0, 2, 3, 1).numpy().copy())
    out = pipe(image, params.prompt, height=DEMO_SIZE[0], width=DEMO_SIZE[1], output_type="uint8",
               generator=torch.Generator().manual_seed(params.seed), callback=callback, **params.pipeline_kwargs(),
               **extra)
    return out[0].permute(0, 2, 3, 1).numpy(), sections


def wait_status(queue, job_id, statuses, timeout=300):
    deadline = time.monotonic() + timeout
    while queue.get(job_id).status not in statuses:
        assert time.monotonic() < deadline, f"job {job_id} stayed {queue.get(job_id).status}"
        time.sleep(0.05)
    return queue.get(job_id)


def run_one(folder, params, image, queue_class=JobQueue, **pictures):
    queue = queue_class(folder, Runner(AppModel()))
    queue.start()
    try:
        job = queue.submit(params, image, **pictures)
        return queue, wait_status(queue, job.id, ("done", "stopped", "failed"))
    finally:
        queue.close()


def test_job_frames_are_the_pipelines(tmp_path, encoded):
    """Every section's mp4 and the final one hold the frames the pipeline itself gives, section by section."""
    image = demo_image()
    queue, job = run_one(tmp_path, PARAMS, image)
    assert job.status == "done", job.message
    final, sections = reference(PARAMS, image)
    writes = encoded[f"{job.id}.mp4"]
    assert len(sections) == 4 and len(writes) == 4
    for got, want in zip(writes, sections):
        assert np.array_equal(got, want)
    assert np.array_equal(writes[-1], final) and job.frames == final.shape[0] == 33
    assert not (tmp_path / f"{job.id}.mp4.state").exists()  # complete: the state is gone
    assert video.read_video(tmp_path / job.output).shape[0] == 33


def test_end_image_and_keyframe_reach_the_pipeline(tmp_path, encoded):
    """An end image and a keyframe go through the job's saved PNGs into the same call the pipeline makes."""
    image, end = demo_image(), PIL.Image.fromarray(np.full((64, 96, 3), 200, np.uint8))
    key = PIL.Image.fromarray(np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (64, 1, 3)))
    params = JobParams(**{**PARAMS.to_json(), "keyframe_embeds": 0.5})
    queue, job = run_one(tmp_path, params, image, last_image=end, keyframes=[(0.6, key)])
    assert job.status == "done", job.message
    final, _ = reference(params, image, last_image=end, keyframes={0.6: key})
    plain, _ = reference(params, image)
    assert np.array_equal(encoded[f"{job.id}.mp4"][-1], final) and not np.array_equal(final, plain)


class StopAfterFirstSection(JobQueue):
    def section_written(self, job, frames, done, sections):
        super().section_written(job, frames, done, sections)
        if done == 1:
            self.stop(job.id)


def test_stop_keeps_the_finished_sections(tmp_path, encoded):
    """Stop during the second section: the job is "stopped" and its mp4 holds the first section's frames, as the
    uninterrupted run had them then; its state stays, and Continue finishes it with the uninterrupted frames."""
    image = demo_image()
    queue, job = run_one(tmp_path, PARAMS, image, queue_class=StopAfterFirstSection)
    assert job.status == "stopped" and job.sections_done == 1 and job.sections == 4
    _, sections = reference(PARAMS, image)
    writes = encoded[f"{job.id}.mp4"]
    assert len(writes) == 1 and np.array_equal(writes[0], sections[0]) and job.frames == sections[0].shape[0]
    assert (tmp_path / f"{job.id}.mp4.state" / "state.json").is_file()

    # Continue: queued again, it runs the 3 missing sections and ends with the uninterrupted run's frames
    again = JobQueue(tmp_path, Runner(AppModel()))
    assert not again.resume("no-such-job") and again.resume(job.id) and not again.resume(job.id)
    again.start()
    try:
        done = wait_status(again, job.id, ("done", "failed"))
    finally:
        again.close()
    final, _ = reference(PARAMS, image)
    assert done.status == "done" and np.array_equal(encoded[f"{job.id}.mp4"][-1], final), done.message
    assert not again.resume(job.id) and not (tmp_path / f"{job.id}.mp4.state").exists()


class ServerStopsAfterTwoSections(JobQueue):
    def section_written(self, job, frames, done, sections):
        super().section_written(job, frames, done, sections)
        if done == 2:  # as Ctrl-C on the server: the worker stops at its next step
            with self._lock:
                self._closing = True
                self._stop.set()


def test_restart_resumes_with_the_uninterrupted_frames(tmp_path, encoded):
    """The server stops during section 3: the job is queued again to resume; the next start runs only sections
    3 and 4 and ends with the frames of a run never stopped."""
    image = demo_image()
    queue = ServerStopsAfterTwoSections(tmp_path, Runner(AppModel()))
    queue.start()
    job = queue.submit(PARAMS, image)
    queue._thread.join(300)
    queue.release()
    job = queue.get(job.id)
    assert job.status == "queued" and job.resume and job.sections_done == 2
    again = JobQueue(tmp_path, Runner(AppModel()))
    assert again.get(job.id).resume
    again.start()
    try:
        done = wait_status(again, job.id, ("done", "failed"))
    finally:
        again.close()
    assert done.status == "done", done.message
    final, sections = reference(PARAMS, image)
    writes = encoded[f"{job.id}.mp4"]
    # 2 sections before the stop; after the restart the restored video, then sections 3 and 4
    assert len(writes) == 5 and np.array_equal(writes[2], sections[1])
    assert np.array_equal(writes[-1], final) and done.frames == final.shape[0]


def test_lora_applies_to_its_job_only(tmp_path, encoded):
    """A job with a LoRA gives the frames of the pipeline with that LoRA loaded; the next job, without it, those of
    the plain pipeline: the weights are restored bit for bit."""
    pipe = demo_pipeline(seed=DEMO_WEIGHTS_SEED)
    shapes = ref_lora.module_shapes(ref_lora.diffusers_kwargs(pipe.transformer.config))
    loras = tmp_path / "loras"
    loras.mkdir()
    ref_lora.save(loras / "style.safetensors", ref_lora.random_peft(shapes, seed=3, magnitude=0.3))
    runner = Runner(AppModel(lora_dir=str(loras)))
    queue = JobQueue(tmp_path / "out", runner)
    before = {k: v.clone() for k, v in runner.load().transformer.state_dict().items()}
    with_lora = JobParams(**{**PARAMS.to_json(), "loras": [["style.safetensors", 0.7]]})
    image = demo_image()
    queue.start()
    try:
        a = queue.submit(with_lora, image)
        b = queue.submit(PARAMS, image)
        wait_status(queue, b.id, ("done", "failed"))
    finally:
        queue.close()
    assert queue.get(a.id).status == queue.get(b.id).status == "done"
    after = runner.load().transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    pipe.load_lora(loras / "style.safetensors", 0.7)
    kw = dict(height=DEMO_SIZE[0], width=DEMO_SIZE[1], output_type="uint8", **PARAMS.pipeline_kwargs())
    want = pipe(image, PARAMS.prompt, generator=torch.Generator().manual_seed(PARAMS.seed), **kw)
    assert np.array_equal(encoded[f"{a.id}.mp4"][-1], want[0].permute(0, 2, 3, 1).numpy())
    plain, _ = reference(PARAMS, image)
    assert np.array_equal(encoded[f"{b.id}.mp4"][-1], plain)


def test_bad_jobs_are_refused_naming_the_culprit(tmp_path):
    """check_job names what is wrong in one line, before the queue writes anything."""
    model = AppModel(lora_dir=str(tmp_path))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 50)
    cases = [
        (dict(image=None), "Start image: upload"),
        (dict(image=str(broken)), "Start image: broken.png: cannot read image"),
        (dict(image=demo_image(), last_image=str(broken)), "End image: broken.png"),
        (dict(image=demo_image(), keyframes=[(9.0, demo_image())]), "keyframe at 9 s is past the video's end"),
        (dict(image=demo_image(), keyframes=[(0.6, demo_image()), (0.6, demo_image())]), "same time"),
        (dict(image=demo_image(), params=JobParams(prompt="[0s: a] [0.5s: b] [0.2s: c]")), "time order"),
        (dict(image=demo_image(), params=JobParams(loras=[["nope.safetensors", 1.0]])), "nope.safetensors"),
    ]
    for kwargs, said in cases:
        params = kwargs.pop("params", PARAMS)
        with pytest.raises(ValueError) as info:
            check_job(model, params, **kwargs)
        assert said in str(info.value) and "\n" not in str(info.value), (kwargs, str(info.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png"]
