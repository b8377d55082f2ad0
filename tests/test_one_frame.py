"""One-frame generation (issue 17; framepack_native/one_frame.py): the transformer call (latents, indices, clean latents,
masks, histories) equals one built by hand from the documented recipe (musubi-tuner's docs/framepack_1f.md), for the
default, kisekaeichi and 1f-mc recipes, and bad recipes / masks are refused naming the culprit."""
import numpy as np
import PIL.Image
import pytest
import torch

from framepack_native.demo import demo_image, demo_pipeline
from framepack_native.one_frame import RECIPES, OneFrameRecipe, parse_recipe
from framepack_native.presets import second_generator

H, W_PX, WINDOW = 32, 48, 2
KW = dict(height=H, width=W_PX, latent_window_size=WINDOW, num_inference_steps=2)


@pytest.fixture(scope="module")
def pipe():
    return demo_pipeline(seed=1)


def gen():
    return torch.Generator().manual_seed(5)


def second():
    return np.asarray(demo_image())[::-1, ::-1].copy()  # (H0, W0, 3) uint8, another picture


def spy(pipe, monkeypatch):
    calls, images = [], []
    forward, encode = pipe.transformer.forward, pipe._encode_image

    def fwd(*args, **kw):
        calls.append((args, kw))
        return forward(*args, **kw)

    def enc(*args, **kw):
        out = encode(*args, **kw)
        images.append(out)
        return out
    monkeypatch.setattr(pipe.transformer, "forward", fwd)
    monkeypatch.setattr(pipe, "_encode_image", enc)
    return calls, images


def encoded_controls(pipe, pictures):
    """What the recipe's clean latents are made of, encoded by hand: the start image first (its SigLIP embedding), then
    each control image, all from the official preset's posterior generator, in that order."""
    posterior = second_generator(gen())
    out = [pipe._encode_image(p, 1, H, W_PX, posterior, torch.float32, "crop") for p in [demo_image(), *pictures]]
    return out[0][0], [latents for _, latents in out[1:]]


def by_hand_mask(mask_u8):
    """The documented latent mask: the mask fitted as its image (centre crop to H x W; here the picture's aspect is
    the output's, so a plain Lanczos resize), resized to the latent size, / 255."""
    fitted = PIL.Image.fromarray(mask_u8).resize((W_PX, H), PIL.Image.LANCZOS)
    small = PIL.Image.fromarray(np.asarray(fitted)).resize((W_PX // 8, H // 8), PIL.Image.LANCZOS)
    return torch.from_numpy(np.asarray(small).astype(np.float32) / 255)[None, None, None]


def check_call(kw, latents, indices, h2, h4):
    assert torch.equal(kw["latents_clean"], latents)
    assert kw["indices_latents_clean"].tolist() == indices
    for name, want in (("2x", h2), ("4x", h4)):
        got, idx = kw[f"latents_history_{name}"], kw[f"indices_latents_history_{name}"]
        if want is None:
            assert got is None and idx is None
        else:
            assert idx.tolist() == want and torch.equal(got, torch.zeros(1, 16, len(want), H // 8, W_PX // 8))


def test_default_recipe(pipe, monkeypatch):
    """Default: the start image as the one control at index 0, a zero post at 1 + W, zero 2x at W + 2.. and 4x at
    W + 4..; the target at W; the SigLIP embedding of the start image; noise (1, C, 1, h, w)."""
    calls, _ = spy(pipe, monkeypatch)
    out = pipe.one_frame(demo_image(), "waves", generator=gen(), **KW)
    assert out.shape == (1, 1, 3, H, W_PX) and out.std() > 0.01
    embeds, (start,) = encoded_controls(pipe, [demo_image()])
    args, kw = calls[0]
    assert args[0].shape == (1, 16, 1, H // 8, W_PX // 8)
    assert kw["indices_latents"].tolist() == [WINDOW]
    assert torch.equal(kw["image_embeds"], embeds)
    zero = torch.zeros_like(start)
    check_call(kw, torch.cat((start, zero), dim=2), [0, 1 + WINDOW], [WINDOW + 2, WINDOW + 3],
               list(range(WINDOW + 4, WINDOW + 20)))
    assert len(calls) == KW["num_inference_steps"]


def test_kisekaeichi(pipe, monkeypatch):
    """kisekaeichi: controls [start, reference] at 0 and 10, each latent times its mask, no post / 2x / 4x, target 1."""
    calls, _ = spy(pipe, monkeypatch)
    rng = np.random.default_rng(0)
    m0 = (rng.random((256, 384)) > 0.5).astype(np.uint8) * 255
    m1 = rng.integers(0, 256, (256, 384), dtype=np.uint8)
    pipe.one_frame(demo_image(), "waves", control_images=[demo_image(), second()], control_masks=[m0, m1],
                   recipe="kisekaeichi", generator=gen(), **KW)
    _, (start, ref) = encoded_controls(pipe, [demo_image(), second()])
    want = torch.cat((start * by_hand_mask(m0), ref * by_hand_mask(m1)), dim=2)
    _, kw = calls[0]
    assert kw["indices_latents"].tolist() == [1]
    check_call(kw, want, [0, 10], None, None)


def test_one_frame_multi_control(pipe, monkeypatch):
    """1f-mc: controls [start, second] at 0 and 1, the zero post at 1 + W kept, no 2x / 4x, target 9."""
    calls, _ = spy(pipe, monkeypatch)
    pipe.one_frame(demo_image(), "waves", control_images=[demo_image(), second()], recipe="1f-mc", generator=gen(),
                   **KW)
    _, (start, other) = encoded_controls(pipe, [demo_image(), second()])
    _, kw = calls[0]
    assert kw["indices_latents"].tolist() == [9]
    check_call(kw, torch.cat((start, other, torch.zeros_like(start)), dim=2), [0, 1, 1 + WINDOW], None, None)


def test_alpha_channel_is_the_mask(pipe, monkeypatch, tmp_path):
    calls, _ = spy(pipe, monkeypatch)
    rgba = np.concatenate([np.asarray(demo_image()), np.full((256, 384, 1), 0, np.uint8)], axis=2)
    rgba[:128, :, 3] = 255
    path = tmp_path / "ctrl.png"
    PIL.Image.fromarray(rgba, "RGBA").save(path)
    pipe.one_frame(demo_image(), "waves", control_images=[str(path)], recipe="no_post,no_2x,no_4x", generator=gen(),
                   **KW)
    _, (ctrl,) = encoded_controls(pipe, [str(path)])
    check_call(calls[0][1], ctrl * by_hand_mask(rgba[..., 3].copy()), [0], None, None)


def test_parse_recipe():
    assert parse_recipe("default") == OneFrameRecipe()
    assert parse_recipe("target_index=1,control_index=0;10,no_post,no_2x,no_4x") == RECIPES["kisekaeichi"]
    assert parse_recipe("kisekaeichi,target_index=5").target_index == 5
    assert parse_recipe("no_2x").history_2x is False and parse_recipe("no_2x").post is True
    for bad, culprit in (("target_index=x", "expected integers"), ("spin", "unknown one-frame option 'spin'"),
                         ("target_index=1;2", "one target index")):
        with pytest.raises(ValueError, match=culprit):
            parse_recipe(bad)


def test_bad_one_frame_input(pipe):
    with pytest.raises(ValueError, match="3 control indices for 2 control images"):
        pipe.one_frame(demo_image(), "waves", control_images=[demo_image(), second()],
                       recipe="control_index=0;1;2", **KW)
    with pytest.raises(ValueError, match="control image 1: the mask is 10 x 10 but its control image is 256 x 384"):
        pipe.one_frame(demo_image(), "waves", control_images=[demo_image(), second()],
                       control_masks=[None, np.zeros((10, 10), np.uint8)], **KW)
    with pytest.raises(ValueError, match="1 control masks for 2 control images"):
        pipe.one_frame(demo_image(), "waves", control_images=[demo_image(), second()], control_masks=[None], **KW)
    with pytest.raises(ValueError, match=r"float mask must be finite and in \[0, 1\]"):
        pipe.one_frame(demo_image(), "waves", control_masks=[np.full((256, 384), 2.0)], **KW)
    with pytest.raises(ValueError, match="target_index must be an int >= 0"):
        pipe.one_frame(demo_image(), "waves", recipe=OneFrameRecipe(target_index=-1), **KW)
    for prompt in ([(0, "a"), (1, "b")], "[0s: a] [1s: b]"):
        with pytest.raises(ValueError, match="not a timestamped one"):
            pipe.one_frame(demo_image(), prompt, **KW)
    with pytest.raises(ValueError, match="1 negative prompts for 2 prompts"):
        pipe.one_frame(demo_image(), ["a", "b"], negative_prompt=["n"], true_cfg_scale=2.0, **KW)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        pipe.one_frame(demo_image(), "a", guidance_scale=float("nan"), **KW)
