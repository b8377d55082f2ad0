"""Per-section control: timestamped prompts (each section uses the prompt active at its own start in the final video,
every distinct prompt encoded once, optional blending) and keyframes (a picture pinned to a time anchors the section
holding it). The expectations are derived here from the section plan, independently of conditioning.py."""
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from framepack_native.conditioning import plan_prompts
from framepack_native.demo import demo_image, demo_pipeline
from framepack_native.presets import get_preset, second_generator
from framepack_native.prompt_schedule import PromptSchedule, PromptTag, blend_embeddings, parse_prompt, section_prompts
from framepack_native.sections import SAMPLING_TYPES, section_plan

MODES = list(SAMPLING_TYPES)  # inverted_anti_drifting, vanilla
SEED = 3
# 3 sections of 2 latents (13 frames): positions span [0, 0.3), [0.3, 17/30), [17/30, 25/30) s; last frame 24/30 s.
KW = dict(height=32, width=48, num_frames=13, latent_window_size=2, num_inference_steps=1)
SECTIONS, WINDOW = 3, 2


@pytest.fixture(scope="module")
def pipe():
    return demo_pipeline(seed=1)


def generate(pipe, prompt, **kw):
    return pipe(demo_image(), prompt, generator=torch.Generator().manual_seed(SEED), **{**KW, **kw})


def picture(seed):
    """A distinct random picture (3, 32, 48) uint8."""
    return torch.randint(0, 256, (3, 32, 48), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def active_text(tags, default, t):
    """The reference rule for open tags [(start, text)] in time order: the last tag starting at or before t; before
    the first tag the default (or, without one, the first tag's text)."""
    started = [text for start, text in tags if start <= t]
    if started:
        return started[-1]
    return default if default is not None else tags[0][1]


def plan_of(mode, last_image=False):
    return section_plan(mode, SECTIONS, WINDOW, last_image=last_image)


# --- 1. the prompt of every section, property-tested on the plan alone -----------------------------------------------

@st.composite
def plans_and_tags(draw):
    mode = draw(st.sampled_from(MODES))
    sections = draw(st.integers(1, 8))
    window = draw(st.integers(1, 9))
    plan = section_plan(mode, sections, window)
    starts = sorted(s.start_s for s in plan)  # video order, starts[0] == 0
    chosen = draw(st.lists(st.integers(0, sections - 1), min_size=1, max_size=sections, unique=True).map(sorted))
    texts = draw(st.lists(st.sampled_from(["a cat", "a dog", "rain", "the sun"]), min_size=len(chosen),
                          max_size=len(chosen)))
    tags = []
    for j, text in zip(chosen, texts):
        if j == 0:
            t = 0.0
        else:  # a start in (previous section's start, this section's start]: the tag holds section j's start only
            u = draw(st.floats(0, 1, exclude_min=True))
            t = starts[j - 1] + u * (starts[j] - starts[j - 1])
            if not starts[j - 1] < t <= starts[j]:
                t = starts[j]
        tags.append((t, text))
    default = draw(st.one_of(st.none(), st.just("the default")))
    form = draw(st.sampled_from(["string", "schedule", "pairs"]))
    if default is not None and form == "pairs":
        form = "schedule"  # pairs carry no default
    return plan, tags, default, form


def as_prompt(tags, default, form):
    if form == "pairs":
        return [(t, text) for t, text in tags]
    if form == "schedule":
        return PromptSchedule(tuple(PromptTag(t, None, text) for t, text in tags), default)
    return " ".join(f"[{t!r}s: {text}]" for t, text in tags) + ("" if default is None else " " + default)


@settings(max_examples=15, deadline=None)
@given(plans_and_tags())
def test_each_section_uses_the_prompt_active_at_its_start(case):
    plan, tags, default, form = case
    prompt = as_prompt(tags, default, form)
    pp = plan_prompts(prompt, plan)
    assert not pp.batch
    assert len(set(pp.texts)) == len(pp.texts)  # each distinct prompt once
    schedule = parse_prompt(prompt) if isinstance(prompt, str) else pp.schedule
    own = section_prompts(schedule, plan)
    for s in plan:  # generation order: inverted's first section is the video's end
        want = active_text(tags, default, s.start_s)
        assert schedule.prompts[own[s.index]] == want
        assert pp.weights[s.index] == ((pp.texts.index(want), 1.0),)
        assert pp.label(s.index) == want
    # every text the sections use is encoded, nothing else
    assert set(pp.texts) == {active_text(tags, default, s.start_s) for s in plan}


# --- spies ------------------------------------------------------------------------------------------------------------

class Spy:
    """Records _encode_text / _encode_image calls and every transformer call, split by section (section events)."""

    def __init__(self, pipe, monkeypatch):
        self.texts, self.images, self.calls, self.events, self.bounds = [], [], [], [], []
        encode_text, encode_image, forward = pipe._encode_text, pipe._encode_image, pipe.transformer.forward

        def spy_text(prompts, dtype):
            self.texts.append(list(prompts))
            return encode_text(prompts, dtype)

        def spy_image(image, *args, **kw):
            out = encode_image(image, *args, **kw)
            self.images.append(out)
            return out

        def spy_forward(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections,
                        **kw):
            self.calls.append(dict(kw, encoder_hidden_states=encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask,
                                   pooled_projections=pooled_projections))
            return forward(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                           pooled_projections, **kw)

        monkeypatch.setattr(pipe, "_encode_text", spy_text)
        monkeypatch.setattr(pipe, "_encode_image", spy_image)
        monkeypatch.setattr(pipe.transformer, "forward", spy_forward)

    def callback(self, event):
        if event["kind"] == "section":
            self.events.append(event)
            self.bounds.append(len(self.calls))

    def section_calls(self):
        """{section index (generation order): [its transformer calls]}."""
        out, lo = {}, 0
        for e, hi in zip(self.events, self.bounds):
            out[e["section"]] = self.calls[lo:hi]
            lo = hi
        return out


def encoded(pipe, text):
    return pipe._encode_text([text], torch.float32)


def assert_text_inputs(call, want):
    embeds, mask, pooled = want
    assert torch.equal(call["encoder_hidden_states"], embeds)
    assert torch.equal(call["encoder_attention_mask"], mask)
    assert torch.equal(call["pooled_projections"], pooled)


# --- 2. the model sees each section's own prompt, each prompt encoded once -------------------------------------------

SCHEDULES = [  # (tags, default): open tags, each holding one section start (0, 0.3, 0.5667 s)
    ([(0.0, "a calm sea"), (0.25, "a storm"), (0.5, "a calm sea")], None),  # 2 distinct prompts, one twice
    ([(0.25, "a storm"), (0.5, "a rainbow")], "a calm sea"),  # 3 prompts, the default first
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", range(len(SCHEDULES)))
def test_each_section_gets_its_prompts_embeddings(pipe, monkeypatch, mode, case):
    tags, default = SCHEDULES[case]
    prompt = as_prompt(tags, default, ["string", "schedule"][case])
    spy = Spy(pipe, monkeypatch)
    generate(pipe, prompt, sampling_type=mode, callback=spy.callback)
    plan = plan_of(mode)
    want_texts = {s.index: active_text(tags, default, s.start_s) for s in plan}
    distinct = set(want_texts.values())
    assert len(distinct) == (2 if case == 0 else 3)
    # each distinct prompt encoded exactly once, alone; nothing else encoded (no CFG in this run)
    assert sorted(map(tuple, spy.texts)) == sorted((t,) for t in distinct)
    monkeypatch.undo()
    want = {t: encoded(pipe, t) for t in distinct}
    pooled = [want[t][2] for t in distinct]  # the prompts differ where the demo model sees them (CLIP's pooled)
    assert all(not torch.equal(a, b) for i, a in enumerate(pooled) for b in pooled[i + 1:])
    per_section = spy.section_calls()
    assert sorted(per_section) == [s.index for s in plan]
    assert all(len(c) == len(spy.calls) // SECTIONS > 0 for c in per_section.values())
    for s in plan:
        for call in per_section[s.index]:
            assert_text_inputs(call, want[want_texts[s.index]])
        assert spy.events[s.index]["prompt"] == want_texts[s.index]


# --- 3. an untagged prompt in any form is the plain run ----------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_a_single_prompt_in_any_form_is_the_plain_run(pipe, monkeypatch, mode):
    spy = Spy(pipe, monkeypatch)
    plain = generate(pipe, "waves", sampling_type=mode)
    assert spy.texts == [["waves"]]
    assert plain.std() > 0.01
    assert not torch.equal(generate(pipe, "a storm", sampling_type=mode), plain)  # the prompt shows in the video
    spy.texts.clear()
    for form in (PromptSchedule((), "waves"), [(0, "waves")], "[0s: waves]"):
        spy.texts.clear()
        assert torch.equal(generate(pipe, form, sampling_type=mode), plain), form
        assert spy.texts == [["waves"]], form


# --- 4. section events and blending ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,blend", [("inverted_anti_drifting", 1), ("vanilla", 1), ("inverted_anti_drifting", 2)])
def test_section_events_and_blends(pipe, monkeypatch, mode, blend):
    tags = [(0.0, "a calm sea"), (0.25, "a storm")]  # the change is at the video's second section (position 1)
    spy = Spy(pipe, monkeypatch)
    generate(pipe, as_prompt(tags, None, "pairs"), sampling_type=mode, blend_sections=blend, callback=spy.callback)
    monkeypatch.undo()
    plan = plan_of(mode)
    assert [e["section"] for e in spy.events] == [s.index for s in plan]
    enc = {t: encoded(pipe, t) for _, t in tags}
    per_section = spy.section_calls()
    for s in plan:
        e = spy.events[s.index]
        assert (e["start_s"], e["end_s"]) == (s.start_s, s.end_s)
        own = active_text(tags, None, s.start_s)
        i = s.position - 1  # sections since the change (position 1)
        if 0 <= i < blend:
            w = (i + 1) / (blend + 1)
            weights = [("a calm sea", 1.0 - w), ("a storm", w)]
            assert e["prompt_weights"] == weights
            assert e["prompt"] == ("a storm" if w >= 0.5 else "a calm sea")  # the heaviest, the newer on a tie
            want = blend_embeddings([enc["a calm sea"], enc["a storm"]], [1.0 - w, w])
            # a real mix (the demo's byte tokenizer leaves the prompt past Llama's 256 tokens: CLIP's pooled differs)
            assert not torch.equal(want[2], enc["a calm sea"][2]) and not torch.equal(want[2], enc["a storm"][2])
        else:
            assert "prompt_weights" not in e
            assert e["prompt"] == own
            want = enc[own]
        for call in per_section[s.index]:
            assert_text_inputs(call, want)
    assert sum("prompt_weights" in e for e in spy.events) == min(blend, SECTIONS - 1)


# --- 5. keyframes ------------------------------------------------------------------------------------------------------

def expected_latents(pipe, pictures):
    """(embeds, latents) of each picture, encoded in order with the official preset's posterior generator."""
    g = second_generator(torch.Generator().manual_seed(SEED))
    fit = get_preset("official").image_fit
    return [pipe._encode_image(p, 1, KW["height"], KW["width"], g, torch.float32, fit) for p in pictures]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weight", [0.0, 0.5, 0.25])  # 0.25: the mix is not symmetric
def test_keyframes_anchor_their_sections(pipe, monkeypatch, mode, weight):
    plan = plan_of(mode)
    by_position = sorted(plan, key=lambda s: s.position)
    key_a, key_b = picture(10), torch.flip(picture(11), dims=(2,))
    # 0.6 s falls in position 2, 0.3 s (= its start) in position 1; given out of time order
    keyframes = {0.6: key_b, by_position[1].start_s: key_a}
    spy = Spy(pipe, monkeypatch)
    generate(pipe, "waves", sampling_type=mode, keyframes=keyframes, keyframe_embeds=weight, callback=spy.callback)
    monkeypatch.undo()
    # posterior draws: the start image, then the keyframes in time order
    start, enc_a, enc_b = expected_latents(pipe, [demo_image(), key_a, key_b])
    assert len(spy.images) == 3
    for (got_e, got_l), (want_e, want_l) in zip(spy.images, (start, enc_a, enc_b)):
        assert torch.equal(got_e, want_e) and torch.equal(got_l, want_l)
    assert not torch.equal(enc_a[1], start[1]) and not torch.equal(enc_a[1], enc_b[1])
    assert not torch.equal(enc_a[0], start[0])
    keyed = {by_position[1].index: enc_a, by_position[2].index: enc_b}
    per_section = spy.section_calls()
    for s in plan:
        embeds, latents = keyed.get(s.index, start)
        if s.index in keyed:
            embeds = start[0] if weight == 0 else ((1 - weight) * start[0].float() + weight * embeds.float())
        assert per_section[s.index]
        for call in per_section[s.index]:
            assert torch.equal(call["latents_clean"][:, :, :1], latents)
            assert torch.equal(call["indices_latents_clean"], s.indices_clean)
            assert torch.equal(call["image_embeds"], embeds)


@pytest.mark.parametrize("at", [24 / 30, 25 / 30])  # the last frame's time, the video's end
def test_a_keyframe_at_the_end_is_the_last_image(pipe, at):
    last = picture(12)
    want = generate(pipe, "waves", last_image=last)
    assert torch.equal(generate(pipe, "waves", keyframes={at: last}), want)
    assert not torch.equal(generate(pipe, "waves"), want)


BAD_KEYFRAMES = [  # (keyframes as {seconds: picture seed}, extra arguments, what the message names)
    ({0.9: 1}, {}, "keyframe at 0.9 s is past the video's end"),
    ({0.1: 1}, {}, "keyframe at 0.1 s falls in the first section"),
    ({0.35: 1, 0.45: 2}, {}, "keyframes at 0.35 s and 0.45 s fall in the same section 2"),
    ({0.8: 1}, {"sampling_type": "vanilla"}, "keyframe at 0.8 s is the video's last frame"),
    ({0.81: 1}, {"last_image": 5}, "keyframe at 0.81 s is the last image, and a last image is already given"),
    ({0.4: 1}, {"keyframe_embeds": 1.5}, "keyframe_embeds must be a number in \\[0, 1\\], got 1.5"),
]


@pytest.mark.parametrize("keyframes,extra,message", BAD_KEYFRAMES)
def test_bad_keyframes_are_refused_naming_the_time(pipe, keyframes, extra, message):
    extra = {k: picture(v) if k == "last_image" else v for k, v in extra.items()}
    with pytest.raises(ValueError, match=message):
        generate(pipe, "waves", keyframes={t: picture(seed) for t, seed in keyframes.items()}, **extra)


BAD_PROMPTS = [
    ("[0s: a] [0.9s: b]", "prompt tag '[0.9s: b]' starts at 0.9 s, at or past the video's end"),
    ("[0.5s: a] [0.2s: b]", "prompt tag '[0.2s: b]' starts before the tag before it"),
    ("[0s-0.4s: a] [0.3s: b]", "prompt tag '[0.0s-0.4s: a]' ends at 0.4 s, after the next tag '[0.3s: b]' starts"),
    ("[0s: a] [0.35s: b] [0.45s: c]", "prompt tag '[0.35s: b]' holds no section's start"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("prompt,message", BAD_PROMPTS)
def test_bad_prompt_tags_are_refused_naming_the_tag(pipe, mode, prompt, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(pipe, prompt, sampling_type=mode)
