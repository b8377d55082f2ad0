"""Resumable runs in Python (issue 14): pipe(..., state_dir=, resume=True) after a stop at any section gives exactly
the frames and latents of a run never stopped (float32 on the CPU), for both sampling modes and past the point where
old latents are spilled to the host; another run's state is refused naming what differs and nothing on disk changes;
damaged states are refused with one line; a new run replaces an old state only when its own first section lands."""
import json

import numpy as np
import pytest
import torch

from framepack_native.demo import demo_image, demo_pipeline
from framepack_native.run_state import ResumeError, differences

KW = dict(height=16, width=16, latent_window_size=1, num_inference_steps=1)
SPILLING = 21  # sections of one latent: past device_history_frames(1) = 19 latents the oldest go to the host


class Stop(Exception):
    pass


def stop_after(k):
    """A callback raising Stop once k sections have finished."""
    def callback(event):
        if event["kind"] == "section" and event["section"] + 1 == k:
            raise Stop
    return callback


@pytest.fixture(scope="module")
def pipe():
    return demo_pipeline(seed=3)


def run(pipe, sections, sampling, output_type="pt", seed=5, **kw):
    return pipe(demo_image(), "a cat", num_frames=sections, sampling_type=sampling, output_type=output_type,
                generator=torch.Generator().manual_seed(seed), **{**KW, **kw})


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("sampling", ["inverted_anti_drifting", "vanilla"])
def test_resume_after_any_section_equals_the_whole_run(pipe, tmp_path, sampling):
    whole = run(pipe, SPILLING, sampling)
    whole_latents = run(pipe, SPILLING, sampling, "latent")
    for k in (2, 20):  # before and after the first spill (section 19)
        state = tmp_path / f"{sampling}-{k}"
        with pytest.raises(Stop):
            run(pipe, SPILLING, sampling, state_dir=state, callback=stop_after(k))
        assert json.loads((state / "state.json").read_text())["done"] == k
        events = []
        resumed = run(pipe, SPILLING, sampling, state_dir=state, resume=True, callback=events.append)
        assert torch.equal(resumed, whole), k
        assert events[0]["kind"] == "resume" and events[0]["sections_done"] == k
        assert [e["section"] for e in events if e["kind"] == "section"] == list(range(k, SPILLING))
    # output "latent" from a resumed run: the spilled latents come back from the state's section files
    state = tmp_path / f"{sampling}-latent"
    with pytest.raises(Stop):
        run(pipe, SPILLING, sampling, "latent", state_dir=state, callback=stop_after(SPILLING - 1))
    assert torch.equal(run(pipe, SPILLING, sampling, "latent", state_dir=state, resume=True), whole_latents)


def test_a_finished_state_returns_the_video_without_running(pipe, tmp_path, monkeypatch):
    state = tmp_path / "s"
    whole = run(pipe, 3, "inverted_anti_drifting", state_dir=state)

    def no_calls(*args, **kwargs):
        raise AssertionError("the transformer ran")
    monkeypatch.setattr(pipe.transformer, "forward", no_calls)
    assert torch.equal(run(pipe, 3, "inverted_anti_drifting", state_dir=state, resume=True), whole)


@pytest.mark.parametrize("change, named", [
    (dict(seed=6), "seed (another seed or generator)"),
    (dict(num_inference_steps=2), "num_inference_steps 1 -> 2"),
    (dict(guidance_scale=5.0), "guidance_scale 10.0 -> 5.0"),
    (dict(sections=4), "sections 3 -> 4"),
    (dict(output_type="uint8"), "frames 'float' -> 'uint8'"),
    (dict(teacache=0.1), "cache 'None' -> 'TeaCacheConfig(threshold=0.1)'"),
    (dict(image=torch.rand(3, 32, 32)), "image (another picture)"),
])
def test_another_runs_state_is_refused_and_kept(pipe, tmp_path, change, named):
    state = tmp_path / "s"
    with pytest.raises(Stop):
        run(pipe, 3, "inverted_anti_drifting", state_dir=state, callback=stop_after(1))
    before = snapshot(state)
    change = dict(change)
    sections, image = change.pop("sections", 3), change.pop("image", None)
    args = dict(num_frames=sections, sampling_type="inverted_anti_drifting", output_type="pt",
                generator=torch.Generator().manual_seed(change.pop("seed", 5)), state_dir=state, resume=True)
    with pytest.raises(ResumeError) as e:
        pipe(demo_image() if image is None else image, "a cat", **{**KW, **args, **change})
    assert named in str(e.value) and "\n" not in str(e.value)
    assert snapshot(state) == before


def test_other_weights_are_refused(pipe, tmp_path):
    state = tmp_path / "s"
    with pytest.raises(Stop):
        run(pipe, 3, "inverted_anti_drifting", state_dir=state, callback=stop_after(1))
    with pytest.raises(ResumeError, match=r"model \(other weights\)"):
        run(demo_pipeline(seed=4), 3, "inverted_anti_drifting", state_dir=state, resume=True)
    with torch.no_grad():  # one weight of the same model changed, as a merged LoRA would
        other = demo_pipeline(seed=3)
        other.transformer.final_layer.linear.weight.mul_(1.001)
    with pytest.raises(ResumeError, match=r"model \(other weights\)"):
        run(other, 3, "inverted_anti_drifting", state_dir=state, resume=True)


def test_differences_are_named_key_by_key():
    saved = {"prompt": ["a"], "height": 64, "seed": "x", "model": "m"}
    now = {"prompt": ["b"], "height": 64, "seed": "y", "model": "m", "new": 1}
    assert differences(saved, now) == ["new None -> 1", "prompt ['a'] -> ['b']", "seed (another seed or generator)"]
    assert differences(saved, dict(saved)) == []


def test_damaged_or_missing_states_are_one_line(pipe, tmp_path):
    state = tmp_path / "s"
    with pytest.raises(ResumeError, match="no saved run to resume"):
        run(pipe, 3, "vanilla", state_dir=state, resume=True)
    with pytest.raises(Stop):
        run(pipe, 3, "vanilla", state_dir=state, callback=stop_after(2))
    doc = json.loads((state / "state.json").read_text())
    tail = state / "tail-0001.safetensors"
    good = tail.read_bytes()
    tail.write_bytes(good[:len(good) // 2])  # truncated
    with pytest.raises(ResumeError, match="unreadable run state") as e:
        run(pipe, 3, "vanilla", state_dir=state, resume=True)
    assert "\n" not in str(e.value)
    tail.write_bytes(good)
    for damage in ("{not json", json.dumps({**doc, "done": 2, "joins": ["back"]}), json.dumps({**doc, "version": 9}),
                   json.dumps({**doc, "done": "2"})):
        (state / "state.json").write_text(damage)
        with pytest.raises(ResumeError, match="not a run state"):
            run(pipe, 3, "vanilla", state_dir=state, resume=True)
    (state / "state.json").write_text(json.dumps({**doc, "done": 7, "joins": ["back"] * 7}))
    with pytest.raises(ResumeError, match="7 finished sections, more than the 3 of this length"):  # vanilla: a longer run
        run(pipe, 3, "vanilla", state_dir=state, resume=True)


def test_a_new_run_replaces_an_old_state_only_when_its_first_section_lands(pipe, tmp_path):
    state = tmp_path / "s"
    with pytest.raises(Stop):
        run(pipe, 3, "inverted_anti_drifting", state_dir=state, callback=stop_after(2))
    before = snapshot(state)

    def fail_first_step(event):
        if event["kind"] == "step":
            raise Stop
    with pytest.raises(Stop):  # another run stopped inside its first section: the old state is intact
        run(pipe, 4, "inverted_anti_drifting", state_dir=state, callback=fail_first_step)
    assert snapshot(state) == before
    with pytest.raises(Stop):
        run(pipe, 4, "inverted_anti_drifting", state_dir=state, callback=stop_after(1))
    assert sorted(p.name for p in state.iterdir()) == ["section-0000.safetensors", "state.json",
                                                       "tail-0000.safetensors"]
    assert json.loads((state / "state.json").read_text())["sections"] == 4


def test_a_folder_of_other_files_is_never_a_state(pipe, tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "mine.safetensors").write_bytes(b"not ours")
    with pytest.raises(ResumeError, match="holds files that are not a run state"):
        run(pipe, 2, "vanilla", state_dir=folder)
    assert [p.name for p in folder.iterdir()] == ["mine.safetensors"]


def test_arguments_that_cannot_be_saved_fail_before_any_section(pipe, tmp_path):
    with pytest.raises(ValueError, match="cannot be saved with its state"):  # json has no numpy scalars
        run(pipe, 2, "vanilla", state_dir=tmp_path / "s", guidance_scale=np.float32(10.0))
    assert not (tmp_path / "s").exists()
    # a tuple reads back as a list: resuming with the same tuple is the same run
    state = tmp_path / "t"
    with pytest.raises(Stop):
        run(pipe, 2, "vanilla", state_dir=state, negative_prompt=("blurry",), true_cfg_scale=2.0,
            callback=stop_after(1))
    run(pipe, 2, "vanilla", state_dir=state, resume=True, negative_prompt=("blurry",), true_cfg_scale=2.0)


def test_resume_needs_a_state_dir(pipe):
    with pytest.raises(ValueError, match="resume=True needs the state_dir"):
        run(pipe, 2, "vanilla", resume=True)
