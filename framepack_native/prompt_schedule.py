"""Per-section prompts: a timestamped prompt string -> which prompt each section of a section_plan uses.

Syntax (FramePack-Studio's modules/prompt_handler.py): `[Ts: text]` is active from T seconds until the next tag starts,
`[Ts-Us: text]` on [T, U); text outside the brackets (stripped, joined by single spaces) is the default prompt,
used wherever no tag is active. Without a default, times before the first tag take the first tag's text and a gap
after a range takes the text of the tag before it. Tags must be in time order and ranges must not overlap; inside a
tag, whitespace (newlines too) collapses to single spaces. A string without brackets is one prompt, kept verbatim.
Times are seconds of the final video; unlike FramePack-Studio they are not snapped to sections and not mirrored for
inverted sampling: a section uses the prompt active at its own start time in the final video (Section.start_s), so
inverted anti-drifting's first generated section, the video's end, gets the prompt of the end. A tag that holds no
section's start would be silently dropped, so section_prompts refuses it. musubi-tuner's section-indexed
`0:...;;;1:...` (docs/framepack.md) is not accepted: such a string is refused rather than encoded literally.
"""
import bisect
import math
import re
from dataclasses import dataclass, field

import torch

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?|[+-]?(?:infinity|inf|nan)"
_TAG = re.compile(rf"\s*({_NUM})\s*s\s*(?:-\s*({_NUM})\s*s\s*)?:(.*)", re.IGNORECASE | re.DOTALL)
_MUSUBI_PART = re.compile(r"\s*-?\d+(?:\s*-\s*-?\d+)?\s*:")


def _collapse(text):
    return " ".join(text.split())


def _fmt(x):
    return repr(float(x)) if isinstance(x, (int, float)) and not isinstance(x, bool) else repr(x)


@dataclass(frozen=True)
class PromptTag:
    """A tagged prompt: active from `start` s until `end` s, or with end None until the next tag starts."""
    start: float
    end: float | None
    text: str

    def __str__(self):
        span = _fmt(self.start) + "s" + ("" if self.end is None else "-" + _fmt(self.end) + "s")
        return f"[{span}: {self.text}]"

    def _name(self):
        s = str(self)
        return repr(s if len(s) <= 60 else s[:56] + "...]")


@dataclass(frozen=True)
class PromptSchedule:
    """Tags in time order and a default prompt (None: none); `prompts` are the distinct texts, `at(t)` picks one."""
    tags: tuple = ()
    default: str | None = None
    _starts: list = field(init=False, repr=False, compare=False)  # segment starts, 0 first, increasing
    _owners: list = field(init=False, repr=False, compare=False)  # per segment: tag index, or None = the default
    _prompt_of: list = field(init=False, repr=False, compare=False)  # per segment: index into prompts
    _prompts: list = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "tags", tuple(self.tags))
        self._validate()
        starts, owners = [], []

        def add(start, owner):  # a piecewise-constant timeline over [0, inf)
            if owners and owners[-1] == owner:
                return
            starts.append(start)
            owners.append(owner)

        fill = (lambda i: None) if self.default is not None else (lambda i: max(i - 1, 0))
        t = 0.0
        for i, tag in enumerate(self.tags):
            if t is not None and tag.start > t:
                add(t, fill(i))
            add(tag.start, i)
            t = tag.end  # None: an open tag runs until the next one starts, no gap
        if t is not None:
            add(t, fill(len(self.tags)))
        texts = [self.default if o is None else self.tags[o].text for o in owners]
        prompts = list(dict.fromkeys(texts))
        object.__setattr__(self, "_starts", starts)
        object.__setattr__(self, "_owners", owners)
        object.__setattr__(self, "_prompt_of", [prompts.index(x) for x in texts])
        object.__setattr__(self, "_prompts", prompts)

    def _validate(self):
        if self.default is not None and not isinstance(self.default, str):
            raise ValueError(f"the default prompt must be a string or None, got {type(self.default).__name__}")
        if not self.tags:
            if self.default is None:
                raise ValueError("the prompt schedule has no prompt: give a default or at least one tag")
            return
        if self.default is not None and not self.default.strip():
            raise ValueError("the default prompt of a timestamped prompt is empty: leave it out (None) instead")
        prev = None
        for tag in self.tags:
            if not isinstance(tag, PromptTag):
                raise ValueError(f"prompt tags must be PromptTag, got {tag!r:.60}")
            for name, x in (("start", tag.start), ("end", tag.end)):
                if x is None and name == "end":
                    continue
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    raise ValueError(f"prompt tag {tag._name()}: the {name} must be a number of seconds, got {x!r}")
                if not math.isfinite(x):
                    raise ValueError(f"prompt tag {tag._name()}: times must be finite, got {x}")
                if x < 0:
                    raise ValueError(f"prompt tag {tag._name()}: times must be >= 0 s, got {x}")
            if tag.end is not None and tag.end <= tag.start:
                raise ValueError(f"prompt tag {tag._name()}: its end {tag.end} s must be after its start {tag.start} s")
            if not isinstance(tag.text, str) or not tag.text.strip():
                raise ValueError(f"prompt tag {tag._name()} has no text")
            if prev is not None:
                if tag.start < prev.start:
                    raise ValueError(f"prompt tag {tag._name()} starts before the tag before it, {prev._name()}: "
                                     "tags must be in time order")
                if tag.start == prev.start:
                    raise ValueError(f"prompt tag {tag._name()} starts at the same time as {prev._name()}")
                if prev.end is not None and prev.end > tag.start:
                    raise ValueError(f"prompt tag {prev._name()} ends at {prev.end} s, after the next tag "
                                     f"{tag._name()} starts: ranges must not overlap")
            prev = tag

    @classmethod
    def from_pairs(cls, pairs):
        """[(start_seconds, text), ...] in time order -> a schedule of open tags (no default; texts kept verbatim)."""
        tags = []
        for i, pair in enumerate(pairs):
            if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
                raise ValueError(f"prompt pair {i} must be (start_seconds, text), got {pair!r:.60}")
            tags.append(PromptTag(pair[0], None, pair[1]))
        if not tags:
            raise ValueError("the list of (start_seconds, text) prompt pairs is empty")
        return cls(tuple(tags))

    @property
    def prompts(self):
        """The distinct prompt texts active somewhere on [0, inf), in order of first appearance in the video."""
        return list(self._prompts)

    def at(self, seconds):
        """The index into `prompts` of the prompt active at `seconds` of the final video."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
            raise ValueError(f"a time in the video must be a finite number of seconds >= 0, got {seconds!r}")
        return self._prompt_of[bisect.bisect_right(self._starts, seconds) - 1]

    def owner_at(self, seconds):
        """The index into `tags` of the tag whose prompt is active at `seconds`, or None for the default."""
        self.at(seconds)
        return self._owners[bisect.bisect_right(self._starts, seconds) - 1]

    def check(self, duration_s):
        """Refuse a tag that starts at or past the end of a video of duration_s seconds (a range may end past it)."""
        if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not 0 < duration_s < math.inf:
            raise ValueError(f"the video's duration must be a finite number of seconds > 0, got {duration_s!r}")
        for tag in self.tags:
            if tag.start >= duration_s:
                raise ValueError(f"prompt tag {tag._name()} starts at {tag.start:g} s, at or past the video's end "
                                 f"({duration_s:.4g} s)")

    def to_string(self):
        """The timestamped string parse_prompt reads back as this schedule (tags, then the default)."""
        texts = [t.text for t in self.tags] + ([] if self.default is None else [self.default])
        for x in texts:
            if "[" in x or "]" in x or (self.tags and x != _collapse(x)):
                raise ValueError(f"{x[:40]!r} cannot be written in a timestamped prompt (brackets or extra spaces)")
        if not self.tags:
            return self.default
        return " ".join([str(t) for t in self.tags] + texts[len(self.tags):])


def _parse_tag(body, offset):
    m = _TAG.fullmatch(body)
    if m is None:
        raise ValueError(f"prompt tag {'[' + body[:50] + ']'!r} at offset {offset} is not [Ts: text] or "
                         "[Ts-Us: text] (times in seconds, e.g. [1.5s: ...])")
    start, end, text = m.groups()
    return PromptTag(float(start), None if end is None else float(end), _collapse(text))


def parse_prompt(text):
    """A prompt string -> PromptSchedule (module docstring); without brackets: one prompt, verbatim."""
    if isinstance(text, PromptSchedule):
        return text
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
    if "[" not in text and "]" not in text:
        parts = text.split(";;;")
        if len(parts) > 1 and all(_MUSUBI_PART.match(p) for p in parts):
            raise ValueError(f"{text[:40]!r}...: musubi-tuner's section-indexed '0:...;;;1:...' prompts are not "
                             "supported; use timestamps: '[0s: ...] [2s: ...]'")
        return PromptSchedule((), text)
    tags, rest, pos, opened = [], [], 0, None
    for m in re.finditer(r"[\[\]]", text):
        i = m.start()
        if m.group() == "[":
            if opened is not None:
                raise ValueError(f"unbalanced brackets in the prompt: '[' at offset {i} inside the tag opened at "
                                 f"offset {opened}")
            opened = i
        else:
            if opened is None:
                raise ValueError(f"unbalanced brackets in the prompt: ']' at offset {i} closes nothing")
            tags.append(_parse_tag(text[opened + 1:i], opened))
            rest.append(text[pos:opened])
            pos, opened = i + 1, None
    if opened is not None:
        raise ValueError(f"unbalanced brackets in the prompt: '[' at offset {opened} is never closed")
    rest.append(text[pos:])
    return PromptSchedule(tuple(tags), _collapse(" ".join(rest)) or None)


def as_schedule(prompt):
    """A PromptSchedule, a prompt string (parse_prompt) or [(start_seconds, text), ...] -> PromptSchedule."""
    if isinstance(prompt, (str, PromptSchedule)):
        return parse_prompt(prompt)
    return PromptSchedule.from_pairs(prompt)


def _duration(plan):
    return max(s.end_s for s in plan)


def section_prompts(schedule, plan):
    """Per Section of section_plan(...) (generation order): the index into schedule.prompts active at its start_s.

    Refuses a tag starting past the video's end (schedule.check) and a tag whose span holds no section's start.
    """
    schedule.check(_duration(plan))
    starts = sorted(s.start_s for s in plan)
    owners = {schedule.owner_at(t) for t in starts}
    for i, tag in enumerate(schedule.tags):
        if i not in owners:
            j = bisect.bisect_right(starts, tag.start)
            near = ", ".join(f"{t:.4g} s" for t in starts[max(j - 1, 0):j + 1])
            raise ValueError(f"prompt tag {tag._name()} holds no section's start, so no section would use it "
                             f"(the nearest sections start at {near})")
    return [schedule.at(s.start_s) for s in plan]


def blend_weights(schedule, plan, blend_sections):
    """Per Section (generation order): [(prompt index, weight), ...], weights summing to 1.

    In video order, after each change from prompt a to b at position c, the sections at c + i (i < blend_sections)
    use a with weight 1 - w and b with w = (i + 1) / (blend_sections + 1); c + blend_sections uses b alone. A change
    inside a blend starts a new blend from the prompt before it. 0: [(section_prompts, 1.0)] per section. Unlike
    FramePack-Studio (worker.py: alpha (i + 1) / blend_sections, counted in generation order), blend_sections counts
    the mixed sections and follows the video's time for both sampling modes. The pipeline interpolates the two
    prompts' embeddings with blend_embeddings (each with its own mask; the union attends).
    """
    if isinstance(blend_sections, bool) or not isinstance(blend_sections, int) or blend_sections < 0:
        raise ValueError(f"blend_sections must be an int >= 0, got {blend_sections!r}")
    own = section_prompts(schedule, plan)
    by_position = sorted(range(len(plan)), key=lambda k: plan[k].position)
    video = [own[k] for k in by_position]  # prompt index per position, video order
    weights, change = [None] * len(plan), None
    for j, k in enumerate(by_position):
        if j > 0 and video[j] != video[j - 1]:
            change = j
        i = None if change is None else j - change
        if i is None or i >= blend_sections:
            weights[k] = [(video[j], 1.0)]
        else:
            w = (i + 1) / (blend_sections + 1)
            weights[k] = [(video[change - 1], 1.0 - w), (video[j], w)]
    return weights


def blend_embeddings(encoded, weights):
    """Weighted mix of encoded prompts: [(embeds (B, L_i, D), mask (B, L_i), pooled (B, P)), ...], weights ->
    (embeds (B, max L_i, D), mask (B, max L_i) bool, pooled (B, P)).

    Each prompt's embeds are zeroed outside its own mask (padding holds pad-token states) and padded with zeros to
    the longest L; the mask is the union, so every token either prompt really has is attended. Weight-0 entries are
    dropped; a single remaining entry of weight 1 is returned unchanged (bit for bit the unblended prompt).
    """
    if len(encoded) != len(weights) or not encoded:
        raise ValueError(f"blend_embeddings needs one weight per encoded prompt, got {len(weights)} for {len(encoded)}")
    if any(not 0 <= w <= 1 for w in weights) or abs(sum(weights) - 1) > 1e-6:
        raise ValueError(f"blend weights must lie in [0, 1] and sum to 1, got {list(weights)}")
    kept = [(e, w) for e, w in zip(encoded, weights) if w > 0]
    if len(kept) == 1 and kept[0][1] == 1:
        return kept[0][0]
    B, _, D = kept[0][0][0].shape
    for (embeds, mask, pooled), _ in kept:
        if embeds.shape[0] != B or embeds.shape[2] != D or tuple(mask.shape) != tuple(embeds.shape[:2]) \
                or pooled.shape != kept[0][0][2].shape:
            raise ValueError(f"cannot blend prompts of shapes {tuple(embeds.shape)} / {tuple(mask.shape)} / "
                             f"{tuple(pooled.shape)} with {tuple(kept[0][0][0].shape)} / {tuple(kept[0][0][2].shape)}")
    L = max(e[0].shape[1] for e, _ in kept)
    out = torch.zeros(B, L, D, dtype=torch.float32, device=kept[0][0][0].device)  # (B, L, D)
    union = torch.zeros(B, L, dtype=torch.bool, device=out.device)  # (B, L)
    pooled = torch.zeros(kept[0][0][2].shape, dtype=torch.float32, device=out.device)  # (B, P)
    for (e, m, p), w in kept:
        n = e.shape[1]
        out[:, :n] += w * e.float() * m.bool()[..., None]  # (B, n, D)
        union[:, :n] |= m.bool()
        pooled += w * p.float()
    return out.to(kept[0][0][0].dtype), union, pooled.to(kept[0][0][2].dtype)
