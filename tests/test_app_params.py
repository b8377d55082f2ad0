"""framepack_native.app.params: a web-app job's settings, their checks, their JSON and the pipeline call they make.

Bounds and labels come from FIELDS, so these tests follow the ranges if they change."""
import dataclasses
import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from framepack_native.app.params import (CACHE_CHOICES, FIELDS, MAX_LORAS, MAX_PROMPT_CHARS, JobParams)
from framepack_native.cli_checks import PRESET_NAMES

NUMERIC = [name for name, f in FIELDS.items() if f.kind in (int, float)]
INTS = [name for name, f in FIELDS.items() if f.kind is int]
FLOATS = [name for name, f in FIELDS.items() if f.kind is float]
STRINGS = [name for name, f in FIELDS.items() if f.kind is str]
BOOLS = [name for name, f in FIELDS.items() if f.kind is bool]


def raises_naming(name, **kwargs):
    """JobParams(**kwargs) raises a ValueError whose message names FIELDS[name].label; returns the message."""
    with pytest.raises(ValueError) as info:
        JobParams(**kwargs)
    message = str(info.value)
    assert FIELDS[name].label in message, message
    return message


# ---- strategies -----------------------------------------------------------------------------------------------

lora_names = st.text(st.characters(blacklist_characters="/\\", blacklist_categories=("Cs",)), min_size=1,
                     max_size=20).filter(lambda s: not s.startswith("."))
lora_lists = st.lists(st.tuples(lora_names, st.floats(-100, 100, allow_nan=False)), max_size=MAX_LORAS,
                      unique_by=lambda item: item[0])


def _field_strategy(name, field):
    if field.kind is int:
        return st.integers(int(field.low), int(field.high))
    if field.kind is float:
        return st.floats(field.low, field.high, allow_nan=False, allow_infinity=False)
    if field.kind is bool:
        return st.booleans()
    if field.kind is str:
        return st.sampled_from(field.choices) if field.choices else st.text(max_size=60)
    assert name == "loras", name
    return lora_lists


valid_kwargs = st.fixed_dictionaries({name: _field_strategy(name, f) for name, f in FIELDS.items()})


def test_fields_cover_the_dataclass():
    """FIELDS names exactly JobParams' fields, and every numeric field has a range (the tests below rely on it)."""
    assert set(FIELDS) == {f.name for f in dataclasses.fields(JobParams)}
    for name in NUMERIC:
        assert FIELDS[name].low is not None and FIELDS[name].high is not None and FIELDS[name].label, name


def test_defaults_are_valid():
    """JobParams() passes its own checks, and its defaults lie in FIELDS' ranges and choices."""
    p = JobParams()
    for name in NUMERIC:
        assert FIELDS[name].low <= getattr(p, name) <= FIELDS[name].high, name
    for name in STRINGS:
        if FIELDS[name].choices:
            assert getattr(p, name) in FIELDS[name].choices, name


# ---- JSON -----------------------------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(valid_kwargs)
def test_json_round_trip(kwargs):
    """from_json(to_json(p)) == p for any valid settings, directly and through json.dumps / json.loads (strict JSON:
    no NaN), and to_json holds the same field values as the dataclass."""
    p = JobParams(**kwargs)
    data = p.to_json()
    assert set(data) == set(FIELDS)
    assert JobParams.from_json(data) == p
    text = json.dumps(data, allow_nan=False)
    back = JobParams.from_json(json.loads(text))
    assert back == p
    for name in FIELDS:
        if name != "loras":
            assert type(getattr(back, name)) is FIELDS[name].kind, name
    assert back.loras == tuple((n, float(s)) for n, s in kwargs["loras"])
    assert json.loads(text)["loras"] == [[n, s] for n, s in p.loras]


@settings(max_examples=80, deadline=None)
@given(valid_kwargs, st.sets(st.sampled_from(sorted(FIELDS))))
def test_missing_fields_take_the_default(kwargs, dropped):
    """A field missing from the JSON (a file of an older version) takes its default; the others keep their value."""
    data = JobParams(**kwargs).to_json()
    for name in dropped:
        del data[name]
    p = JobParams.from_json(data)
    default = JobParams()
    for name in FIELDS:
        expected = getattr(default, name) if name in dropped else getattr(JobParams(**kwargs), name)
        assert getattr(p, name) == expected, name


def test_empty_json_is_the_defaults():
    """from_json({}) is JobParams()."""
    assert JobParams.from_json({}) == JobParams()


def test_unknown_fields_are_named():
    """An unknown field in the JSON is refused, with every unknown name in the message."""
    data = {**JobParams().to_json(), "bogus_field": 1, "another_one": "x"}
    with pytest.raises(ValueError) as info:
        JobParams.from_json(data)
    assert "bogus_field" in str(info.value) and "another_one" in str(info.value)


@pytest.mark.parametrize("data", [[], "text", 5, None, [["steps", 25]]])
def test_from_json_needs_an_object(data):
    """Anything but a JSON object is refused with a ValueError."""
    with pytest.raises(ValueError):
        JobParams.from_json(data)


@pytest.mark.parametrize("name", NUMERIC)
def test_from_json_checks_values(name):
    """from_json applies the same checks as the constructor: an out-of-range value read from JSON is named."""
    with pytest.raises(ValueError) as info:
        JobParams.from_json({name: FIELDS[name].high + 1})
    assert FIELDS[name].label in str(info.value)


def test_frozen():
    """JobParams is immutable: a checked value cannot be replaced by an unchecked one."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        JobParams().steps = 0


# ---- numeric fields -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NUMERIC)
def test_bounds_are_inclusive(name):
    """Both ends of every numeric range are accepted, with the field's type."""
    f = FIELDS[name]
    for value in (f.low, f.high):
        value = int(value) if f.kind is int else float(value)
        p = JobParams(**{name: value})
        assert getattr(p, name) == value and type(getattr(p, name)) is f.kind


def _just_outside(field):
    if field.kind is int:
        outside = [int(field.low) - 1, int(field.high) + 1]
        # as whole floats too, where the float is that integer (-2**63 - 1 is not a float: it rounds into range)
        return outside + [float(v) for v in outside if float(v) == v]
    return [math.nextafter(field.low, -math.inf), math.nextafter(field.high, math.inf), field.low - 1,
            field.high + 1]


@pytest.mark.parametrize("name", NUMERIC)
def test_values_just_outside_the_range_are_refused(name):
    """The nearest values beyond either end of a numeric range (the next int, the next float) are refused,
    naming the field's label."""
    for value in _just_outside(FIELDS[name]):
        raises_naming(name, **{name: value})


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(name, value):
    """NaN and the infinities are refused for every numeric field, naming its label."""
    raises_naming(name, **{name: value})


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("value", [True, False])
def test_bools_are_not_numbers(name, value):
    """True / False are refused for numeric fields although bool is an int subclass (True would be in most ranges)."""
    raises_naming(name, **{name: value})


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("value", ["5", "", None, [5], {"value": 5}, (5,), b"5"])
def test_wrong_types_are_refused_for_numbers(name, value):
    """A string, None, a list, an object or bytes is refused for a numeric field, naming its label."""
    raises_naming(name, **{name: value})


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_whole_floats_become_ints(data):
    """An int field given a whole float in range (25.0, as JSON from a browser may give) accepts it as that int."""
    name = data.draw(st.sampled_from(INTS))
    f = FIELDS[name]
    value = data.draw(st.integers(max(int(f.low), -2**53), min(int(f.high), 2**53)))
    p = JobParams(**{name: float(value)})
    assert getattr(p, name) == value and type(getattr(p, name)) is int


@pytest.mark.parametrize("name", INTS)
def test_fractions_are_refused_for_ints(name):
    """2.5 (inside every int range here) is refused for an int field, naming its label, not rounded."""
    f = FIELDS[name]
    assert f.low <= 2.5 <= f.high
    raises_naming(name, **{name: 2.5})


@pytest.mark.parametrize("name", FLOATS)
def test_ints_become_floats(name):
    """A float field given an int in range stores it as a float (so the JSON and equality are stable)."""
    value = int(math.ceil(FIELDS[name].low))
    p = JobParams(**{name: value})
    assert getattr(p, name) == value and type(getattr(p, name)) is float


@pytest.mark.parametrize("name", NUMERIC)
def test_huge_ints_are_refused_with_a_value_error(name):
    """An integer too large for a float (json.loads gives one for '1' followed by 400 zeros) is refused with a
    ValueError naming the field, like any other out-of-range value."""
    with pytest.raises(ValueError) as info:
        JobParams.from_json(json.loads('{"%s": 1%s}' % (name, "0" * 400)))
    assert FIELDS[name].label in str(info.value)


# ---- bool and text fields -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BOOLS)
@pytest.mark.parametrize("value", [0, 1, 1.0, "true", "false", None, []])
def test_bool_fields_need_a_bool(name, value):
    """A bool field accepts only true / false: 0, 1, "true", None are refused, naming its label."""
    raises_naming(name, **{name: value})


@pytest.mark.parametrize("name", STRINGS)
@pytest.mark.parametrize("value", [5, None, b"text", ["text"], True])
def test_text_fields_need_text(name, value):
    """A text field refuses a number, None, bytes, a list or a bool, naming its label."""
    raises_naming(name, **{name: value})


@pytest.mark.parametrize("name", ["prompt", "negative_prompt"])
def test_prompt_length_limit(name):
    """A prompt of MAX_PROMPT_CHARS characters is accepted; one more is refused, naming the field."""
    assert getattr(JobParams(**{name: "x" * MAX_PROMPT_CHARS}), name) == "x" * MAX_PROMPT_CHARS
    raises_naming(name, **{name: "x" * (MAX_PROMPT_CHARS + 1)})


@pytest.mark.parametrize("value", CACHE_CHOICES)
def test_cache_choices_accepted(value):
    """Every cache choice is accepted as is."""
    assert JobParams(cache=value).cache == value


@pytest.mark.parametrize("value", PRESET_NAMES)
def test_preset_choices_accepted(value):
    """Every preset name is accepted as is."""
    assert JobParams(preset=value).preset == value


@pytest.mark.parametrize("name", [n for n in STRINGS if FIELDS[n].choices])
def test_other_choices_refused(name):
    """A text that is not one of the choices (a different case, padding, empty, another field's choice) is
    refused, naming the field's label."""
    choices = FIELDS[name].choices
    others = {c.upper() for c in choices} | {c + " " for c in choices} | {"", "None"}
    others |= {c for n in STRINGS if FIELDS[n].choices for c in FIELDS[n].choices}
    for value in sorted(others - set(choices)):
        raises_naming(name, **{name: value})


# ---- LoRAs ----------------------------------------------------------------------------------------------------

def test_loras_normalised():
    """LoRAs given as lists (JSON) become a tuple of (name, float strength) tuples; equal settings compare equal."""
    p = JobParams(loras=[["a.safetensors", 1], ["b.safetensors", -0.5]])
    assert p.loras == (("a.safetensors", 1.0), ("b.safetensors", -0.5))
    assert all(type(s) is float for _, s in p.loras)
    assert p == JobParams(loras=(("a.safetensors", 1.0), ("b.safetensors", -0.5)))


@pytest.mark.parametrize("name", ["a/b.safetensors", "../x.safetensors", "..", "x/..", "/abs.safetensors",
                                  "a\\b.safetensors", "..\\x", ".hidden.safetensors", ".", ""])
def test_lora_names_must_be_plain_file_names(name):
    """A LoRA name with a folder separator, '..', a leading '.' or nothing is refused, naming the LoRAs field."""
    raises_naming("loras", loras=[[name, 1.0]])


def test_duplicate_loras_refused():
    """The same LoRA twice (even with different strengths) is refused."""
    raises_naming("loras", loras=[["a.safetensors", 1.0], ["a.safetensors", 0.5]])


@pytest.mark.parametrize("strength", [math.nan, math.inf, -math.inf, 100.5, -101, True, "1", None])
def test_lora_strengths_checked(strength):
    """A non-finite, too large, bool or non-number strength is refused, naming the LoRAs field."""
    raises_naming("loras", loras=[["a.safetensors", strength]])


@pytest.mark.parametrize("strength", [100, -100, 0])
def test_lora_strength_bounds(strength):
    """Strengths of +-100 and 0 are accepted."""
    assert JobParams(loras=[["a.safetensors", strength]]).loras == (("a.safetensors", float(strength)),)


def test_lora_count_limit():
    """MAX_LORAS LoRAs are accepted; one more is refused, naming the LoRAs field."""
    loras = [[f"l{i}.safetensors", 1.0] for i in range(MAX_LORAS + 1)]
    assert len(JobParams(loras=loras[:MAX_LORAS]).loras) == MAX_LORAS
    raises_naming("loras", loras=loras)


@pytest.mark.parametrize("loras", ["a.safetensors", {"a": 1.0}, None, [["a.safetensors"]],
                                   [["a.safetensors", 1.0, 2.0]], ["a.safetensors"], [[1, 1.0]],
                                   [[None, 1.0]]])
def test_lora_shape_checked(loras):
    """Anything but a list of [file name, strength] pairs is refused, naming the LoRAs field."""
    raises_naming("loras", loras=loras)


def test_huge_int_lora_strength_is_a_value_error():
    """A LoRA strength too large for a float is refused with a ValueError naming the LoRAs field."""
    raises_naming("loras", loras=[["a.safetensors", 10**400]])


# ---- the pipeline call ----------------------------------------------------------------------------------------

def test_pipeline_kwargs_example():
    """pipeline_kwargs maps every setting to its FramePackPipeline argument, checked against a written-out dict."""
    p = JobParams(prompt="a cat", negative_prompt="blurry", seed=7, seconds=3.5, window=5, steps=12, guidance=6.0,
                  cfg=2.0, rescale=0.3, cache="magcache", preset=PRESET_NAMES[-1], blend_sections=2,
                  keyframe_embeds=0.25, crf=20, vae_tiling=True, loras=[["a.safetensors", 0.5]])
    assert p.pipeline_kwargs() == {
        "negative_prompt": "blurry", "seconds": 3.5, "latent_window_size": 5, "num_inference_steps": 12,
        "guidance_scale": 6.0, "true_cfg_scale": 2.0, "guidance_rescale": 0.3, "cache": "magcache",
        "preset": PRESET_NAMES[-1], "blend_sections": 2, "keyframe_embeds": 0.25}


def test_pipeline_kwargs_none_values():
    """cache "none" becomes cache=None and an empty negative prompt becomes negative_prompt=None."""
    kwargs = JobParams(cache="none", negative_prompt="").pipeline_kwargs()
    assert kwargs["cache"] is None and kwargs["negative_prompt"] is None


@settings(max_examples=60, deadline=None)
@given(valid_kwargs)
def test_pipeline_kwargs_property(kwargs):
    """For any valid settings, pipeline_kwargs is the hand-built mapping of fields to pipeline arguments."""
    p = JobParams(**kwargs)
    expected = {
        "negative_prompt": p.negative_prompt if p.negative_prompt != "" else None,
        "seconds": p.seconds, "latent_window_size": p.window, "num_inference_steps": p.steps,
        "guidance_scale": p.guidance, "true_cfg_scale": p.cfg, "guidance_rescale": p.rescale,
        "cache": None if p.cache == "none" else p.cache, "preset": p.preset,
        "blend_sections": p.blend_sections, "keyframe_embeds": p.keyframe_embeds}
    assert p.pipeline_kwargs() == expected
