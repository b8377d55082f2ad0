"""The CLI's per-section control options with the demo model, in a subprocess (issue 17): a timestamped --prompt,
--keyframe, --blend-sections and --extend give the Python API's frames; bad ones are one line, exit code 2, no output
file, before any model loads."""
import numpy as np
import pytest
import torch

from framepack_native.demo import DEMO_PROMPT, demo_image, demo_pipeline
from tests.test_cli_options import ARGS, STEPS, cli, error_line

PROMPT = "[0s: waves] [0.2s: a calm sea]"
KW = dict(height=64, width=96, num_frames=5, latent_window_size=2, num_inference_steps=STEPS, output_type="uint8")


def python_run(**kw):
    pipe = demo_pipeline(seed=31337)
    return pipe(kw.pop("image", demo_image()), kw.pop("prompt", PROMPT), generator=torch.Generator().manual_seed(31337),
                **{**KW, **kw})[0]


def frames_of(out):
    return torch.from_numpy(np.load(str(out) + ".frames.npy")).permute(0, 3, 1, 2)  # (F, 3, H, W)


def test_timestamped_prompt_and_keyframe(tmp_path):
    key = tmp_path / "key.png"
    import PIL.Image
    PIL.Image.fromarray(np.asarray(demo_image())[::-1].copy()).save(key)
    out = tmp_path / "o.mp4"
    proc = cli(ARGS + ["--num-frames", "9", "--out", str(out), "--prompt", PROMPT, "--blend-sections", "1",
                       "--keyframe", f"0.3:{key}", "--keyframe-embeds", "0.5"])
    assert proc.returncode == 0, proc.stderr
    expected = python_run(num_frames=9, blend_sections=1, keyframes={0.3: str(key)}, keyframe_embeds=0.5)
    assert torch.equal(frames_of(out), expected)


def test_extend(tmp_path):
    first = tmp_path / "a.mp4"
    assert cli(ARGS + ["--sampling", "vanilla", "--out", str(first)]).returncode == 0
    out = tmp_path / "b.mp4"
    proc = cli(ARGS + ["--sampling", "vanilla", "--extend", str(first), "--context-latents", "2", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    expected = python_run(image=None, prompt=DEMO_PROMPT, video=str(first), context_latents=2, sampling_type="vanilla",
                          height=None, width=None)
    got = frames_of(out)
    assert torch.equal(got, expected) and got.shape[0] == 9 + 8


def test_one_frame(tmp_path):
    """--one-frame kisekaeichi with two control images and a mask: the PNG holds pipe.one_frame's picture."""
    import PIL.Image
    start, ref, mask = tmp_path / "s.png", tmp_path / "r.png", tmp_path / "m.png"
    demo_image().save(start)
    PIL.Image.fromarray(np.asarray(demo_image())[::-1].copy()).save(ref)
    grey = np.zeros((256, 384), np.uint8)
    grey[:, :200] = 255
    PIL.Image.fromarray(grey).save(mask)
    out = tmp_path / "f.png"
    proc = cli(ARGS + ["--out", str(out), "--one-frame", "kisekaeichi,target_index=2", "--control-image", str(start),
                       "--control-image", str(ref), "--control-mask", str(mask), "--control-mask", str(mask)])
    assert proc.returncode == 0, proc.stderr
    pipe = demo_pipeline(seed=31337)
    want = pipe.one_frame(demo_image(), DEMO_PROMPT, control_images=[str(start), str(ref)],
                          control_masks=[str(mask), str(mask)], recipe="kisekaeichi,target_index=2", height=64,
                          width=96, latent_window_size=2, num_inference_steps=STEPS,
                          generator=torch.Generator().manual_seed(31337), output_type="uint8")
    got = torch.from_numpy(np.array(PIL.Image.open(out))).permute(2, 0, 1)
    assert torch.equal(got, want[0, 0])


@pytest.mark.parametrize("extra, culprit", [
    (["--keyframe", "0.3"], "--keyframe '0.3': expected SECONDS:FILE"),
    (["--keyframe", "x:key.png"], "--keyframe 'x:key.png': expected SECONDS:FILE"),
    (["--keyframe", "0.3:missing.png"], "--keyframe missing.png: cannot read image"),
    (["--keyframe", "9:KEY"], "keyframe at 9 s is past the video's end"),
    (["--keyframe", "0.01:KEY"], "falls in the first section"),
    (["--keyframe-embeds", "2"], "keyframe_embeds must be a number in [0, 1]"),
    (["--prompt", "[0s: a] [9s: b]"], "prompt tag '[9.0s: b]' starts at 9 s, at or past the video's end"),
    (["--prompt", "[1s: a] [0s: b]"], "tags must be in time order"),
    (["--prompt", "[0s-2s: a] [1s: b]"], "ranges must not overlap"),
    (["--prompt", "[0s: a", "--blend-sections", "1"], "unbalanced brackets"),
    (["--blend-sections", "-1"], "blend_sections must be an int >= 0"),
    (["--extend", "missing.mp4", "--sampling", "vanilla"], "missing.mp4: no such video file"),
    (["--extend", "JUNK", "--sampling", "vanilla"], "junk.mp4: cannot read the video"),
    (["--extend", "VIDEO"], "extending a video needs vanilla sampling"),
    (["--extend", "VIDEO", "--sampling", "vanilla", "--context-latents", "0"], "context_latents must be an int in"),
    (["--extend", "VIDEO", "--sampling", "vanilla", "--height", "32", "--width", "96"], "the video to extend is 64 x 96"),
    (["--one-frame", "spin"], "unknown one-frame option 'spin'"),
    (["--one-frame", "kisekaeichi", "--control-image", "KEY"], "2 control indices for 1 control images"),
    (["--one-frame", "--control-image", "missing.png"], "--control-image missing.png: cannot read image"),
    (["--one-frame", "--control-image", "KEY", "--control-mask", "VIDEO"], "--control-mask"),
    (["--one-frame", "--keyframe", "0.3:KEY"], "--keyframe does not go with it"),
    (["--control-image", "KEY"], "--control-image and --control-mask need --one-frame"),
])
def test_bad_control_options(tmp_path, extra, culprit):
    key = tmp_path / "key.png"
    demo_image().save(key)
    video = tmp_path / "v.mp4"
    from framepack_native.video import write_mp4
    write_mp4(video, torch.zeros(5, 3, 64, 96, dtype=torch.uint8))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    names = {"KEY": key, "VIDEO": video, "JUNK": junk}
    extra = [str(names.get(a, a)).replace(":KEY", f":{key}") for a in extra]
    out = tmp_path / ("o.png" if "--one-frame" in extra else "o.mp4")
    line = error_line(cli(ARGS + ["--out", str(out), *extra]))
    assert culprit in line.replace(str(tmp_path) + "/", ""), line
    assert not out.exists()
