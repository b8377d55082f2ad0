"""MagCache (framepack_native.magcache): the skip rule against FramePack-Studio's MagCache.should_skip restated here,
the published tables' selection, the transformer with one state per guidance branch, calibration against residual
norms computed here from the exact run, and the pipeline's cache= option (float32, CPU)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from framepack_native.caches import MagCacheConfig, TeaCacheConfig
from framepack_native.magcache import MagCache, nearest_interp, published_ratios, skip_schedule
from framepack_native.magcache_ratios import DEMO_25, TABLES
from framepack_native.models import FramePackTransformer
from framepack_native.models.transformer import FramePackTransformerConfig
from tests.reference.common import perturb_, rel_l2
from tests.reference.transformer import TINY, make_inputs

STEPS = 8
SAMPLING_TYPES = ("inverted_anti_drifting", "vanilla")


class StudioMagCache:
    """FP-Studio/framepack-studio diffusers_helper/models/mag_cache.py MagCache.should_skip, restated: called once
    per step in order, numpy float64 ratios, the counter wrapping after num_steps."""

    def __init__(self, ratios, threshold, max_skips, retention):
        self.ratios, self.threshold, self.k, self.retention = np.asarray(ratios, np.float64), threshold, max_skips, \
            retention
        self.num_steps, self.step_index = len(ratios), 0

    def should_skip(self):
        if self.step_index == 0:
            self.accumulated_ratio, self.accumulated_steps, self.accumulated_err = 1.0, 0, 0
        skip = False
        if self.step_index >= int(self.retention * self.num_steps) and self.step_index >= 1:
            cur = self.ratios[self.step_index]
            self.accumulated_ratio = self.accumulated_ratio * cur
            self.accumulated_err += np.abs(1 - self.accumulated_ratio)
            self.accumulated_steps += 1
            if self.accumulated_err <= self.threshold and self.accumulated_steps <= self.k and np.abs(1 - cur) <= 0.06:
                skip = True
            else:
                self.accumulated_ratio, self.accumulated_steps, self.accumulated_err = 1.0, 0, 0
        self.step_index = (self.step_index + 1) % self.num_steps
        return skip


def studio_schedule(ratios, threshold, max_skips, retention, runs=1):
    ref = StudioMagCache(ratios, threshold, max_skips, retention)
    return [tuple(ref.should_skip() for _ in ratios) for _ in range(runs)]


PUBLISHED = sorted({r for table in TABLES.values() for by in table.values() for v in by.values() for r in v})
ratio = st.one_of(st.just(1.0), st.sampled_from(PUBLISHED), st.floats(0.9, 1.1), st.floats(0.3, 2.0))


@settings(max_examples=400, deadline=None)
@given(ratios=st.lists(ratio, min_size=1, max_size=80),
       threshold=st.one_of(st.just(0.0), st.sampled_from([0.1, 0.15, 0.24]), st.floats(0, 1)),
       max_skips=st.integers(0, 8), retention=st.one_of(st.sampled_from([0.0, 0.2, 0.25, 1.0]), st.floats(0, 1)))
def test_skip_rule_matches_framepack_studio(ratios, threshold, max_skips, retention):
    # one deliberate difference: threshold 0 never skips (Studio would skip a step whose ratio is exactly 1.0)
    expected = (False,) * len(ratios) if threshold == 0 else studio_schedule(ratios, threshold, max_skips,
                                                                             retention)[0]
    assert skip_schedule(ratios, threshold, max_skips, retention) == expected
    # a second section restarts the counter: Studio's wrapped state gives the same decisions again
    assert len(set(studio_schedule(ratios, threshold, max_skips, retention, runs=2))) == 1


def test_threshold_zero_is_where_we_differ_from_the_references():
    r = TABLES["inverted_anti_drifting"][640][25]  # ratios[19] == ratios[20] == 1.0
    assert [t for t, s in enumerate(studio_schedule(r, 0.0, 2, 0.25)[0]) if s] == [19, 20]
    assert not any(skip_schedule(r, 0.0, 2, 0.25))


# The README's table: steps skipped of 25 at each published default (FramePack-Studio 0.1 / K 2 / retention 0.25;
# MagCache4FramePack 0.1 / 3 / 0.2 and 0.15 / 4 / 0.2), on FramePack-Studio's 640 tables and MagCache4FramePack's
# demo vectors.
SCHEDULES = {
    ("inverted_anti_drifting", "studio_640", (0.1, 2, 0.25)): [6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22],
    ("inverted_anti_drifting", "studio_640", (0.1, 3, 0.2)): [5, 7, 9, 10, 12, 13, 15, 16, 18, 19, 20, 22],
    ("inverted_anti_drifting", "studio_640", (0.15, 4, 0.2)): [5, 6, 8, 9, 11, 12, 13, 14, 16, 17, 18, 19, 21, 22],
    ("inverted_anti_drifting", "demo_25", (0.1, 2, 0.25)): [6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22],
    ("inverted_anti_drifting", "demo_25", (0.1, 3, 0.2)): [5, 6, 8, 10, 11, 13, 14, 16, 17, 19, 20, 21, 23],
    ("inverted_anti_drifting", "demo_25", (0.15, 4, 0.2)): [5, 6, 8, 9, 11, 12, 13, 15, 16, 17, 19, 20, 21, 22],
    ("vanilla", "studio_640", (0.1, 2, 0.25)): [6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 23],
    ("vanilla", "studio_640", (0.1, 3, 0.2)): [5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 23],
    ("vanilla", "studio_640", (0.15, 4, 0.2)): [5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 23],
    ("vanilla", "demo_25", (0.1, 2, 0.25)): [6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 23],
    ("vanilla", "demo_25", (0.1, 3, 0.2)): [5, 6, 8, 10, 11, 13, 14, 15, 17, 18, 19, 21, 23],
    ("vanilla", "demo_25", (0.15, 4, 0.2)): [5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 18, 19, 20, 21, 23],
}


@pytest.mark.parametrize("key", sorted(SCHEDULES))
def test_published_25_step_schedules(key):
    sampling, source, (threshold, k, retention) = key
    ratios = TABLES[sampling][640][25] if source == "studio_640" else DEMO_25[sampling]
    schedule = skip_schedule(ratios, threshold, k, retention)
    assert [t for t, s in enumerate(schedule) if s] == SCHEDULES[key]
    assert schedule == studio_schedule(ratios, threshold, k, retention)[0]
    if source == "studio_640" and (threshold, k, retention) == (0.1, 2, 0.25):  # the defaults, at the 640 bucket
        state = MagCacheConfig().start(25, sampling_type=sampling, height=640, width=640)
        assert state.schedule == schedule and state.ratios == ratios


@settings(max_examples=300, deadline=None)
@given(src=st.lists(st.floats(0.5, 1.5), min_size=1, max_size=80), n=st.integers(1, 120))
def test_nearest_interp_matches_numpy(src, n):
    a = np.array(src)  # MagCache4FramePack nearest_interp
    expected = a[-1:] if n == 1 else a[np.round(np.arange(n) * ((len(a) - 1) / (n - 1))).astype(int)]
    assert nearest_interp(tuple(src), n) == tuple(expected.tolist())


@settings(max_examples=300, deadline=None)
@given(sampling=st.sampled_from(SAMPLING_TYPES), height=st.integers(1, 80).map(lambda x: 16 * x),
       width=st.integers(1, 80).map(lambda x: 16 * x), steps=st.integers(1, 120))
def test_published_ratios_nearest_entry(sampling, height, width, steps):
    mean = (height + width) / 2
    resolution = min(sorted(TABLES[sampling], reverse=True), key=lambda r: abs(r - mean))  # ties: the larger
    known = min(sorted(TABLES[sampling][resolution]), key=lambda s: abs(s - steps))
    table = np.array(TABLES[sampling][resolution][known])
    expected = table if known == steps else (table[-1:] if steps == 1 else table[np.round(
        np.arange(steps) * ((len(table) - 1) / (steps - 1))).astype(int)])
    got = published_ratios(sampling, height, width, steps)
    assert got == tuple(expected.tolist()) and len(got) == steps


def test_published_ratios_pinned_cases():
    inv = TABLES["inverted_anti_drifting"]
    assert published_ratios("inverted_anti_drifting", 64, 96, 25) == inv[128][25]  # the demo's 64 x 96
    assert published_ratios("inverted_anti_drifting", 640, 768, 25) == inv[768][25]  # mean 704: a tie, the larger
    assert published_ratios("vanilla", 512, 512, 37) == nearest_interp(TABLES["vanilla"][512][25], 37)
    assert published_ratios("vanilla", 512, 512, 38) == nearest_interp(TABLES["vanilla"][512][50], 38)
    with pytest.raises(ValueError, match="published ratios for sampling types .* got 'forward'"):
        published_ratios("forward", 64, 64, 25)


# --- the transformer ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturb_(FramePackTransformer(FramePackTransformerConfig.tiny()), 0).float().eval()


def section_calls(seed, steps=STEPS, text_lens=(5,)):
    """One sampling run's transformer inputs: the latent drifting from noise as sigma falls, the rest fixed."""
    base = make_inputs(TINY, text_lens=list(text_lens), seed=seed)
    drift = torch.randn(base["hidden_states"].shape, generator=torch.Generator().manual_seed(seed + 100))
    return [{**base, "hidden_states": base["hidden_states"] * (1 - k / steps) + drift * (k / steps),
             "timestep": torch.full((len(text_lens),), 1000.0 * (1 - k / steps))} for k in range(steps)]


@pytest.mark.parametrize("sampling", SAMPLING_TYPES)
@torch.no_grad()
def test_threshold_zero_is_the_exact_run(model, sampling):
    for config in (MagCacheConfig(threshold=0), MagCacheConfig(threshold=0, max_skips=8, retention=0,
                                                               ratios=[1.0] * STEPS)):
        state = config.start(STEPS, sampling_type=sampling, height=48, width=80)
        for inputs in section_calls(seed=1):
            assert torch.equal(model(**inputs, cache=state), model(**inputs))
        assert (state.skipped, state.computed) == (0, STEPS)


def capture(model, calls, **cache):
    """Per call: (the blocks' input img (B, Li, D) or None when skipped, the final layer's input (B, Lw, D), out)."""
    seen = []
    hooks = [model.double_blocks[0].register_forward_pre_hook(lambda m, a: seen.append(("img", a[0]))),
             model.final_layer.register_forward_pre_hook(lambda m, a: seen.append(("x", a[0])))]
    rows = []
    try:
        for inputs in calls:
            out = model(**inputs, **cache)
            got = dict(seen)
            rows.append((got.get("img"), got["x"], out))
            seen.clear()
    finally:
        for h in hooks:
            h.remove()
    return rows


@torch.no_grad()
def test_skipped_steps_reuse_the_last_computed_residual(model):
    config = MagCacheConfig(threshold=1.0, max_skips=2, retention=0, ratios=[1.0] * STEPS)
    state = config.start(STEPS)
    assert state.schedule == (False, True, True, False, True, True, False, True)  # runs of K = 2, reset after 3
    calls = section_calls(seed=2)
    exact, cached = capture(model, calls), capture(model, calls, cache=state)
    last = None
    for t, ((img, x, out), (c_img, c_x, c_out)) in enumerate(zip(exact, cached)):
        window = slice(img.shape[1] - x.shape[1], img.shape[1])
        if state.schedule[t]:
            assert c_img is None  # no block ran
            assert torch.equal(c_x, img[:, window] + last)
            assert rel_l2(c_out, out) > 1e-3  # skipping changed the output
        else:
            assert torch.equal(c_out, out)
            last = x - img[:, window]
    assert (state.skipped, state.computed) == (5, 3)


@torch.no_grad()
def test_guidance_branches_keep_their_own_residual(model):
    """With CFG the pipeline makes one state per branch: interleaved calls (positive, negative, positive, ...) give
    what each branch gives alone, and both decide by step index."""
    config = MagCacheConfig(threshold=1.0, max_skips=2, retention=0.25, ratios=[1.0] + [0.99] * (STEPS - 1))
    pos_calls, neg_calls = section_calls(seed=3), section_calls(seed=4)  # other text, image and history
    alone = [[model(**c, cache=s) for c in calls] for calls, s in ((pos_calls, config.start(STEPS)),
                                                                   (neg_calls, config.start(STEPS)))]
    pos, neg = config.start(STEPS), config.start(STEPS)
    skips = {"pos": [], "neg": []}
    for t, (p, n) in enumerate(zip(pos_calls, neg_calls)):
        for name, state, inputs, ref in (("pos", pos, p, alone[0][t]), ("neg", neg, n, alone[1][t])):
            before = state.skipped
            assert torch.equal(model(**inputs, cache=state), ref)
            skips[name].append(state.skipped > before)
    assert skips["pos"] == skips["neg"] == list(pos.schedule) and any(pos.schedule)
    # the official patch's forward-call counter, in our terms: one state for both branches runs out of steps
    shared = config.start(STEPS)
    with pytest.raises(ValueError, match="started for 8 steps and is called once more: start one per"):
        for p, n in zip(pos_calls, neg_calls):
            model(**p, cache=shared)
            model(**n, cache=shared)


def hand_ratios(model, calls):
    """Mean over batch rows and image tokens of ||r_t|| / ||r_(t-1)|| (float64), r = every block run here on every
    row of the image tokens the exact forward fed them, minus those tokens."""
    args = []
    hook = model.double_blocks[0].register_forward_pre_hook(lambda m, a: args.append(a))
    try:
        for c in calls:
            model(**c)
    finally:
        hook.remove()
    norms = []
    for img, txt, vec, cos, sin, kv_lens, backend in args:
        x, ctx = img, txt
        for block in model.double_blocks:
            x, ctx = block(x, ctx, vec, cos, sin, kv_lens, backend)
        joint = torch.cat((x, ctx), dim=1)  # (B, Li + Lc, D)
        for block in model.single_blocks:
            joint = block(joint, vec, cos, sin, img.shape[1], kv_lens, backend)
        norms.append((joint[:, :img.shape[1]] - img).double().norm(dim=-1))  # (B, Li)
    return [(b / a).mean().item() for a, b in zip(norms, norms[1:])]


@torch.no_grad()
def test_calibration_gives_the_hand_computed_ratios(model):
    text_lens = (5, 3)  # batch 2, masked text
    sections = [section_calls(seed=s, text_lens=text_lens) for s in (5, 6)]
    config = MagCacheConfig(calibrate=True)
    for calls in sections:
        state = config.start(STEPS, sampling_type="vanilla", height=48, width=80)
        for c in calls:
            assert rel_l2(model(**c, cache=state), model(**c)) < 1e-6  # never skips
        assert (state.skipped, state.computed) == (0, STEPS)
    by_hand = [hand_ratios(model, calls) for calls in sections]
    expected = [1.0] + [(a + b) / 2 for a, b in zip(*by_hand)]
    got = config.calibrated_ratios()
    assert len(got) == STEPS and got[0] == 1.0
    np.testing.assert_allclose(got, expected, rtol=2e-6)
    assert max(abs(r - 1) for r in got) > 1e-3  # the steps do differ: the comparison can fail
    half = MagCacheConfig(calibrate=True)
    state = half.start(STEPS)
    for c in sections[0][:3]:
        model(**c, cache=state)
    with pytest.raises(ValueError, match="no MagCache calibration run finished"):
        half.calibrated_ratios()


@torch.no_grad()
def test_teacache_through_cache_argument(model):
    inputs = section_calls(seed=7, steps=2)[0]
    tea = TeaCacheConfig(0.0).start(2)
    assert torch.equal(model(**inputs, cache=tea), model(**inputs)) and (tea.computed, tea.skipped) == (1, 0)
    with pytest.raises(ValueError, match="pass cache= or its older name teacache=, not both"):
        model(**inputs, cache=tea, teacache=tea)


def test_state_checks():
    with pytest.raises(ValueError, match="never skips step 0"):
        MagCache((True, False))
    with pytest.raises(ValueError, match="runs every step exactly"):
        MagCache((False, True), calibration=[])


# --- the pipeline: cache= on the demo pipeline (2 sections of 8 steps, CFG: two branches) -------------------------

PIPE_STEPS = 8


@pytest.fixture(scope="module")
def demo():
    from framepack_native.demo import demo_pipeline
    return demo_pipeline()


def generate(pipe, **kw):
    from framepack_native.demo import demo_image
    return pipe(demo_image(64, 96), "waves", negative_prompt="blur", true_cfg_scale=3.0, height=64, width=96,
                num_frames=9, latent_window_size=2, num_inference_steps=PIPE_STEPS,
                generator=torch.Generator().manual_seed(0), **kw)


@pytest.fixture(scope="module")
def exact_frames(demo):
    return generate(demo)


@pytest.fixture
def started(monkeypatch):
    """Every MagCache state the pipeline starts, in order."""
    made, start = [], MagCacheConfig.start

    def recorded(self, *args, **kwargs):
        made.append(start(self, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(MagCacheConfig, "start", recorded)
    return made


@torch.no_grad()
def test_pipeline_threshold_zero_is_the_exact_run(demo, exact_frames, started):
    assert torch.equal(generate(demo, cache=MagCacheConfig(threshold=0)), exact_frames)
    assert len(started) == 4  # 2 sections x 2 guidance branches
    assert all((s.skipped, s.computed) == (0, PIPE_STEPS) for s in started)


@torch.no_grad()
def test_pipeline_magcache_defaults(demo, exact_frames, started):
    frames = generate(demo, cache="magcache")
    ratios = published_ratios(demo.sampling_type, 64, 96, PIPE_STEPS)  # pixels, not latents
    schedule = skip_schedule(ratios, 0.1, 2, 0.25)
    assert len(started) == 4 and sum(schedule) > 0
    assert all(s.ratios == ratios and s.schedule == schedule and s.skipped == sum(schedule) for s in started)
    assert rel_l2(frames, exact_frames) > 1e-4  # skipped steps are approximate
