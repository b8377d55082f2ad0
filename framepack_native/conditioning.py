"""What conditions each section of a run, decided from the arguments and the section plan before any model runs.

Text. `prompt` is
  - a plain string: one video, one prompt for every section (encoded once: the path of a run before schedules);
  - a list of plain strings: a batch, one video per prompt, encoded together, every section the same;
  - a timestamped string "[0s-2s: a cat sleeps] [2s: the cat wakes up]", a prompt_schedule.PromptSchedule, or a
    list of (start_seconds, text) pairs: one video whose sections each use the prompt active at their own start
    time in the final video (prompt_schedule.section_prompts); every distinct prompt is encoded once, on its own
    (its own mask), and blend_sections > 0 mixes the embeddings over the sections after each change
    (prompt_schedule.blend_weights, blend_embeddings).
Keyframes. `keyframes={seconds: image}` pins pictures to times of the final video. The section whose span
[start_s, end_s) holds a keyframe is anchored on it as musubi-tuner and FramePack-eichi anchor a section image: the
keyframe's latent is that section's clean start latent (latents_clean[:, :, 0], at frame index
indices_latents_clean[0] = 0, in place of the start image's latent), and its SigLIP embedding is mixed into the
section's image embedding with weight keyframe_embeds (0: the start image's embedding alone). A keyframe at or
after the last frame's time (up to the video's end) is the last image (inverted anti-drifting only): the first
generated section's 1x clean latent, as last_image. The first section of the video is anchored on the start image;
a keyframe inside its span, two in one section, one past the end, or one inside a video being extended is refused.
"""
import math
from dataclasses import dataclass

from framepack_native.image import load_image
from framepack_native.prompt_schedule import PromptSchedule, as_schedule, blend_weights, parse_prompt


@dataclass(frozen=True)
class PromptPlan:
    """The texts to encode and, per section (generation order), which of them it uses.

    texts: encoded together as one batch when `batch` (every section uses them all, one per video), else each on
    its own; weights: per section [(index into texts, weight), ...] (None for a batch)."""
    texts: tuple
    batch: bool
    weights: tuple = None
    schedule: PromptSchedule = None

    def label(self, section_index):
        """The prompt a section used, for its callback event: the heaviest of its blend (the newer on a tie)."""
        if self.batch:
            return self.texts[0] if len(self.texts) == 1 else list(self.texts)
        ws = self.weights[section_index]
        return self.texts[max(reversed(ws), key=lambda iw: iw[1])[0]]

    def fingerprint(self, blend_sections):
        """What a run state records of the prompts: the texts, or the schedule and its blending."""
        if self.batch:
            return list(self.texts)
        return {"schedule": [[t.start, t.end, t.text] for t in self.schedule.tags], "default": self.schedule.default,
                "blend_sections": blend_sections}


def _is_pairs(prompt):
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[1], str) for p in prompt)


def prompt_schedule_of(prompt):
    """A PromptSchedule for a timestamped prompt (string with tags, PromptSchedule, (seconds, text) pairs), or None
    for a plain string / a batch of plain strings (each refused if it carries tags: schedules are for one video)."""
    if isinstance(prompt, PromptSchedule) or _is_pairs(prompt):
        return as_schedule(prompt)
    if isinstance(prompt, str):
        schedule = parse_prompt(prompt)
        return schedule if schedule.tags else None
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        for i, text in enumerate(prompt):
            if parse_prompt(text).tags:
                raise ValueError(f"prompt {i} of the batch is timestamped; a timestamped prompt makes one video: "
                                 "pass it alone, or a batch of plain prompts")
        return None
    raise ValueError("prompt must be a string (timestamped or not), a list of strings (a batch), a PromptSchedule or "
                     f"a list of (start_seconds, text) pairs, got {type(prompt).__name__}")


def plan_prompts(prompt, plan, blend_sections=0):
    """prompt (module docstring) and a section_plan -> PromptPlan; ValueError naming a bad tag or blend_sections."""
    schedule = prompt_schedule_of(prompt)
    if schedule is None:
        if isinstance(blend_sections, bool) or not isinstance(blend_sections, int) or blend_sections < 0:
            raise ValueError(f"blend_sections must be an int >= 0, got {blend_sections!r}")
        return PromptPlan(tuple([prompt] if isinstance(prompt, str) else prompt), True)
    weights = blend_weights(schedule, plan, blend_sections)
    return PromptPlan(tuple(schedule.prompts), False, tuple(tuple(w) for w in weights), schedule)


@dataclass(frozen=True)
class Keyframe:
    """A picture pinned to `seconds` of the final video; `section`: the index (generation order) of the section
    anchored on it, or None for the last image."""
    seconds: float
    image: object
    section: int | None


def _span(s):
    return f"section {s.position + 1} ({s.start_s:.4g}-{s.end_s:.4g} s)"


def plan_keyframes(keyframes, plan, *, fps=30, last_image=None):
    """keyframes {seconds: image} and a section_plan -> ([Keyframe] in time order, last image or None).

    Refuses (ValueError naming the time) a time that is not a finite number >= 0, one inside the first section,
    two in one section, one past the video's end, and a last-image keyframe beside last_image or in vanilla
    sampling. Every image is read once here (a bad file fails before any model loads)."""
    if keyframes is None:
        return [], last_image
    if not hasattr(keyframes, "items"):
        raise ValueError(f"keyframes must be a {{seconds: image}} mapping, got {type(keyframes).__name__}")
    if not len(keyframes):
        return [], last_image
    by_position = sorted(plan, key=lambda s: s.position)
    last_frame_s = by_position[-1].end_frame / fps
    duration = by_position[-1].end_s
    out, taken = [], {}
    for t, image in sorted(keyframes.items(), key=lambda kv: _seconds(kv[0])):
        t = _seconds(t)
        if t > duration + 1e-9:
            raise ValueError(f"keyframe at {t:g} s is past the video's end ({duration:.4g} s)")
        try:
            image = load_image(image)
        except ValueError as e:
            raise ValueError(f"keyframe at {t:g} s: {e}") from None
        if t >= last_frame_s - 1e-9:
            if plan[0].sampling_type != "inverted_anti_drifting":
                raise ValueError(f"keyframe at {t:g} s is the video's last frame: vanilla sampling walks forward and "
                                 "cannot aim at a last image; use inverted anti-drifting or an earlier time")
            if last_image is not None or any(k.section is None for k in out):
                raise ValueError(f"keyframe at {t:g} s is the last image, and a last image is already given")
            out.append(Keyframe(t, image, None))
            continue
        if t < by_position[0].start_s:
            raise ValueError(f"keyframe at {t:g} s falls in the video being extended (0-{by_position[0].start_s:.4g} "
                             "s); pin it later")
        s = next(s for s in by_position if s.start_s <= t < s.end_s)
        if s.start_frame == 0:
            raise ValueError(f"keyframe at {t:g} s falls in the first {_span(s)}, which is anchored on the start "
                             "image; pin it later or make it the start image")
        if s.index in taken:
            raise ValueError(f"keyframes at {taken[s.index]:g} s and {t:g} s fall in the same {_span(s)}: one "
                             "keyframe per section")
        taken[s.index] = t
        out.append(Keyframe(t, image, s.index))
    last = next((k.image for k in out if k.section is None), last_image)
    return [k for k in out if k.section is not None], last


def _seconds(t):
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise ValueError(f"keyframe times must be finite numbers of seconds >= 0, got {t!r}")
    return float(t)


def check_keyframe_embeds(weight):
    """keyframe_embeds: the weight of a keyframe's SigLIP embedding in its section's, a number in [0, 1]."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ValueError(f"keyframe_embeds must be a number in [0, 1], got {weight!r}")
    return float(weight)
