"""framepack_native.prompt_schedule against a brute-force reading of the rules: parsing round trips, each section's
prompt is the one active at its start time in the final video (both sampling modes, 1-12 sections, several windows),
one line naming the culprit for each bad input, blend weights, and blend_embeddings derived by hand."""
import functools
import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from framepack_native.prompt_schedule import (PromptSchedule, PromptTag, as_schedule, blend_embeddings, blend_weights,
                                              parse_prompt, section_prompts)
from framepack_native.sections import SAMPLING_TYPES, section_plan

WINDOWS = (1, 2, 5, 9, 16)
PLANS = [(m, n, w) for m in SAMPLING_TYPES for n in range(1, 13) for w in WINDOWS]
WORDS = st.text("abcxyz", min_size=1, max_size=5)
TEXTS = st.lists(WORDS, min_size=1, max_size=4).map(" ".join)  # whitespace-normalised, no brackets


@functools.lru_cache(maxsize=None)
def plan_of(mode, sections, window):
    return tuple(section_plan(mode, sections, window))


def start_time(position, window):
    """A section's first frame in the final video / 30 fps, by hand: latent j >= 1 covers frames 4j-3..4j."""
    return 0.0 if position == 0 else (4 * position * window + 1) / 30


def reference_owner(tags, default, t):
    """The tag (index) or default (None) active at t, read straight off the rules."""
    for i, tag in enumerate(tags):
        end = tag.end if tag.end is not None else (tags[i + 1].start if i + 1 < len(tags) else math.inf)
        if tag.start <= t < end:
            return i
    if default is not None:
        return None
    before = [i for i, tag in enumerate(tags) if tag.start <= t]
    return before[-1] if before else 0


def reference_text(tags, default, t):
    owner = reference_owner(tags, default, t)
    return default if owner is None else tags[owner].text


@st.composite
def schedules(draw, times=None):
    """Random valid schedules; tag times drawn from `times` (a list) or anywhere in [0, 30) s."""
    n = draw(st.integers(0, 5))
    pool = st.sampled_from(times) if times else st.floats(0, 30, allow_nan=False, allow_infinity=False)
    points = sorted(set(draw(st.lists(pool, min_size=2 * n, max_size=2 * n))))
    tags, i = [], 0
    while i < len(points) and len(tags) < n:
        ranged = i + 1 < len(points) and draw(st.booleans())
        tags.append(PromptTag(points[i], points[i + 1] if ranged else None, draw(TEXTS)))
        i += 2 if ranged else 1
    default = draw(st.none() | TEXTS) if tags else draw(TEXTS)
    return PromptSchedule(tuple(tags), default)


def messy(schedule, draw):
    """The schedule as a string with random whitespace (newlines too) around and inside tags and the default."""
    ws = st.sampled_from(["", " ", "  ", "\n", " \t\n "])
    def spaced(text):
        return draw(ws) + draw(st.sampled_from([" ", "\n", "  \n"])).join(text.split()) + draw(ws)
    pieces = [f"[{draw(ws)}{t.start!r}s{draw(ws)}" + ("" if t.end is None else f"-{draw(ws)}{t.end!r}s{draw(ws)}")
              + f":{spaced(t.text)}]" for t in schedule.tags]
    words = [] if schedule.default is None else schedule.default.split()
    cut = sorted(draw(st.lists(st.integers(0, len(words)), min_size=len(pieces), max_size=len(pieces))))
    out, prev = [], 0
    for piece, c in zip(pieces, cut):  # default words before, between and after the tags
        out += [" ".join(words[prev:c]), piece]
        prev = c
    out.append(" ".join(words[prev:]))
    return draw(ws).join(spaced(x) if x and not x.startswith("[") else x for x in out) or " "


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_round_trip(data):
    schedule = data.draw(schedules())
    assume(schedule.tags or schedule.default.strip())
    assert parse_prompt(schedule.to_string()) == schedule
    if schedule.tags:
        assert parse_prompt(messy(schedule, data.draw)) == schedule


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_section_prompt_is_the_one_active_at_its_start(data):
    mode, sections, window = data.draw(st.sampled_from(PLANS))
    plan = plan_of(mode, sections, window)
    duration = (4 * sections * window + 1) / 30
    boundaries = [start_time(p, window) for p in range(sections)] + [duration]
    schedule = data.draw(schedules(times=boundaries + [duration / 3, 1.0, 2.5, duration + 1]))
    starts = [start_time(s.position, window) for s in plan]
    assert starts == [s.start_s for s in plan]
    if mode == "inverted_anti_drifting":
        assert [s.position for s in plan] == list(reversed(range(sections)))  # the end is generated first
    owners = {reference_owner(schedule.tags, schedule.default, t) for t in starts}
    past_end = any(tag.start >= duration for tag in schedule.tags)
    unused = [i for i in range(len(schedule.tags)) if i not in owners]
    if past_end or unused:
        with pytest.raises(ValueError, match="past the video's end" if past_end else "holds no section's start"):
            section_prompts(schedule, plan)
        return
    got = section_prompts(schedule, plan)
    want = [reference_text(schedule.tags, schedule.default, t) for t in starts]
    assert [schedule.prompts[i] for i in got] == want
    assert blend_weights(schedule, plan, 0) == [[(i, 1.0)] for i in got]


@settings(max_examples=200, deadline=None)
@given(schedules())
def test_prompts_are_the_distinct_active_texts_in_order_of_appearance(schedule):
    tags, default = schedule.tags, schedule.default
    probes = sorted({0.0, *(t.start for t in tags), *(t.end for t in tags if t.end is not None), 1e9})
    seen = list(dict.fromkeys(reference_text(tags, default, t) for t in probes))
    assert schedule.prompts == seen
    assert len(set(schedule.prompts)) == len(schedule.prompts)
    for t in probes + [p + 1e-3 for p in probes]:
        assert schedule.prompts[schedule.at(t)] == reference_text(tags, default, t)


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(blacklist_characters="[]"), max_size=40), st.sampled_from(PLANS))
def test_an_untagged_prompt_is_one_verbatim_prompt(text, plan_args):
    assume(";;;" not in text)
    schedule = parse_prompt(text)
    assert schedule.prompts == [text] and schedule.tags == ()
    assert section_prompts(schedule, plan_of(*plan_args)) == [0] * plan_args[1]
    assert as_schedule(text) == schedule


def test_examples_by_hand():
    s = parse_prompt("[0s-2s: a cat  sleeps] [2s: the cat\nwakes up] a garden")
    assert s.prompts == ["a cat sleeps", "the cat wakes up"]  # the default is never active here
    s = parse_prompt("a garden [1s-2s: a cat]")
    assert s.prompts == ["a garden", "a cat"] and [s.at(t) for t in (0, 0.99, 1, 1.99, 2, 99)] == [0, 0, 1, 1, 0, 0]
    s = parse_prompt("[1s-2s: a] [3s: b]")  # no default: before the first tag the first, in the gap the previous
    assert [s.prompts[s.at(t)] for t in (0, 1.5, 2.5, 3, 9)] == ["a", "a", "a", "b", "b"]
    s = PromptSchedule.from_pairs([(0, "a  b"), (2.5, "c")])
    assert s.prompts == ["a  b", "c"] and as_schedule([(0, "a  b"), (2.5, "c")]) == s
    # 5 sections of window 9: sections start at 0, 37/30, 73/30, 109/30, 145/30 s; the video is 181/30 s
    s = parse_prompt("[0s: a] [2.4s: b] [3.6s: c]")
    inverted, vanilla = plan_of("inverted_anti_drifting", 5, 9), plan_of("vanilla", 5, 9)
    assert section_prompts(s, inverted) == [2, 2, 1, 0, 0]  # generation order: the end first
    assert section_prompts(s, vanilla) == [0, 0, 1, 2, 2]
    assert blend_weights(s, vanilla, 2) == [[(0, 1.0)], [(0, 1.0)], [(0, 1 - 1 / 3), (1, 1 / 3)],
                                            [(1, 1 - 1 / 3), (2, 1 / 3)], [(1, 1 - 2 / 3), (2, 2 / 3)]]
    assert blend_weights(s, inverted, 2) == blend_weights(s, vanilla, 2)[::-1]


@pytest.mark.parametrize("text, culprit", [
    ("[2s: a] [1s: b]", "'[1.0s: b]' starts before"),
    ("[1s: a] [1s: b]", "'[1.0s: b]' starts at the same time"),
    ("[0s-3s: a] [2s: b]", "'[0.0s-3.0s: a]' ends at 3.0 s"),
    ("[-1s: a]", "'[-1.0s: a]': times must be >= 0"),
    ("[0s--1s: a]", "'[0.0s--1.0s: a]': times must be >= 0"),
    ("[infs: a]", "times must be finite"),
    ("[0s-nans: a]", "times must be finite"),
    ("[2s-2s: a]", "'[2.0s-2.0s: a]': its end 2.0 s must be after"),
    ("[3s-1s: a]", "its end 1.0 s must be after"),
    ("[1s:  \n ]", "'[1.0s: ]' has no text"),
    ("a [1s: b", "'[' at offset 2 is never closed"),
    ("a] [1s: b]", "']' at offset 1 closes nothing"),
    ("[1s: a [2s: b]]", "'[' at offset 7 inside the tag opened at offset 0"),
    ("a cat [sleeping]", "'[sleeping]' at offset 6 is not [Ts: text]"),
    ("[2: a]", "'[2: a]' at offset 0 is not"),
    ("0:a cat;;;1:a dog", "musubi-tuner's section-indexed"),
])
def test_bad_strings_give_one_line_naming_the_culprit(text, culprit):
    with pytest.raises(ValueError) as e:
        parse_prompt(text)
    assert culprit in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("call, culprit", [
    (lambda: PromptSchedule.from_pairs([(1, "a"), (0.5, "b")]), "'[0.5s: b]' starts before"),
    (lambda: PromptSchedule.from_pairs([(0, "a"), ("x", "b")]), "the start must be a number of seconds"),
    (lambda: PromptSchedule.from_pairs([(0, "a"), (1, " ")]), "has no text"),
    (lambda: PromptSchedule.from_pairs([(0, "a", "b")]), "prompt pair 0 must be (start_seconds, text)"),
    (lambda: PromptSchedule.from_pairs([]), "is empty"),
    (lambda: as_schedule(["a cat", "a dog"]), "prompt pair 0 must be"),
    (lambda: parse_prompt("[0s: a] [9s: b]").check(6.0), "'[9.0s: b]' starts at 9 s, at or past the video's end"),
    (lambda: parse_prompt("[0s: a]").check(0), "duration must be"),
    (lambda: parse_prompt("a").at(-1), "a time in the video must be"),
    (lambda: section_prompts(parse_prompt("[0s: a] [7s: b]"), plan_of("vanilla", 5, 9)), "past the video's end"),
    (lambda: section_prompts(parse_prompt("[0s: a] [0.5s: b] [1s: c]"), plan_of("vanilla", 5, 9)),
     "'[0.5s: b]' holds no section's start, so no section would use it (the nearest sections start at 0 s, 1.233 s)"),
    (lambda: blend_weights(parse_prompt("a"), plan_of("vanilla", 2, 9), -1), "blend_sections must be an int >= 0"),
])
def test_bad_calls_give_one_line_naming_the_culprit(call, culprit):
    with pytest.raises(ValueError) as e:
        call()
    assert culprit in str(e.value) and "\n" not in str(e.value)


@settings(max_examples=150, deadline=None)
@given(st.data(), st.integers(0, 5))
def test_blend_weights(data, blend):
    mode, sections, window = data.draw(st.sampled_from(PLANS))
    plan = plan_of(mode, sections, window)
    times = [start_time(p, window) for p in range(sections)]
    schedule = data.draw(schedules(times=times))
    try:
        own = section_prompts(schedule, plan)
    except ValueError:
        assume(False)
    weights = blend_weights(schedule, plan, blend)
    order = sorted(range(sections), key=lambda k: plan[k].position)
    video, mix = [own[k] for k in order], [weights[k] for k in order]
    for j, pairs in enumerate(mix):
        assert math.isclose(sum(w for _, w in pairs), 1, abs_tol=1e-12) and all(0 < w <= 1 for _, w in pairs)
        assert pairs[-1][0] == video[j]  # the section's own prompt is always in its mix
        changes = [c for c in range(1, j + 1) if video[c] != video[c - 1]]
        if not changes or j - changes[-1] >= blend:
            assert pairs == [(video[j], 1.0)]
        else:
            c = changes[-1]
            assert [p for p, _ in pairs] == [video[c - 1], video[j]]
            if j > c:  # monotone: the new prompt gains, the old one loses, section by section
                assert pairs[1][1] > mix[j - 1][1][1] and pairs[0][1] < mix[j - 1][0][1]
    assert blend_weights(schedule, plan, 0) == [[(i, 1.0)] for i in own]


def test_blend_embeddings_by_hand():
    # prompt a: 2 tokens (the second is padding), prompt b: 3 tokens, all real; D = 1, P = 2, B = 1
    a = (torch.tensor([[[1.0], [7.0]]]), torch.tensor([[True, False]]), torch.tensor([[2.0, 0.0]]))
    b = (torch.tensor([[[3.0], [5.0], [-4.0]]]), torch.tensor([[True, True, True]]), torch.tensor([[0.0, 4.0]]))
    embeds, mask, pooled = blend_embeddings([a, b], [0.25, 0.75])
    # token 0: 0.25 * 1 + 0.75 * 3; token 1: a's padding (7) is not mixed in: 0.75 * 5; token 2: 0.75 * -4
    assert torch.equal(embeds, torch.tensor([[[2.5], [3.75], [-3.0]]]))
    assert torch.equal(mask, torch.tensor([[True, True, True]]))
    assert torch.equal(pooled, torch.tensor([[0.5, 3.0]]))
    same = blend_embeddings([a, b], [1.0, 0.0])
    assert all(x is y for x, y in zip(same, a))  # a single prompt passes through untouched
    with pytest.raises(ValueError, match="sum to 1"):
        blend_embeddings([a, b], [0.5, 0.6])
    with pytest.raises(ValueError, match="cannot blend prompts of shapes"):
        blend_embeddings([a, (b[0][..., :0], b[1], b[2])], [0.5, 0.5])
