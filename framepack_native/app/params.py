"""Every parameter of a web-app job: its default, its range, its JSON, and the pipeline call it makes.

The defaults and ranges are the official app's (demo_gradio.py: seed 31337, 1..120 s, window 9, 25 steps, distilled
CFG 10, CFG 1, rescale 0, TeaCache on, CRF 16); the demo model's own steps and size replace them under --demo.
A job's JSON ("params" in OUTPUT.json, beside every video) holds exactly these fields and loads back through
`JobParams.from_json`, which checks every field as the page's inputs are checked: a field that is unknown, missing
(it takes the default), of the wrong type or out of range is named in one line.
"""
import dataclasses
import math
from typing import List, Tuple

from framepack_native.cli_checks import MAX_SECONDS, MAX_WINDOW, PRESET_NAMES, SEED_RANGE

CACHE_CHOICES = ("none", "teacache", "magcache")
MAX_APP_STEPS = 100        # the official app's slider
MAX_APP_GUIDANCE = 32.0    # the official app's sliders (distilled CFG and CFG)
MAX_LORAS = 8
MAX_KEYFRAMES = 4
MAX_PROMPT_CHARS = 20_000


@dataclasses.dataclass(frozen=True)
class Field:
    kind: type             # int, float, bool, str
    low: float = None
    high: float = None
    label: str = ""
    choices: tuple = None


FIELDS = {
    "prompt": Field(str, label="Prompt"),
    "negative_prompt": Field(str, label="Negative prompt"),
    "seed": Field(int, *SEED_RANGE, label="Seed"),
    "seconds": Field(float, 1.0, float(MAX_SECONDS), label="Video length (seconds)"),
    "window": Field(int, 1, MAX_WINDOW, label="Latent window size"),
    "steps": Field(int, 1, MAX_APP_STEPS, label="Steps"),
    "guidance": Field(float, 1.0, MAX_APP_GUIDANCE, label="Distilled CFG scale"),
    "cfg": Field(float, 1.0, MAX_APP_GUIDANCE, label="CFG scale"),
    "rescale": Field(float, 0.0, 1.0, label="CFG re-scale"),
    "cache": Field(str, label="Cache", choices=CACHE_CHOICES),
    "preset": Field(str, label="Preset", choices=PRESET_NAMES),
    "blend_sections": Field(int, 0, 64, label="Blend prompts over sections"),
    "keyframe_embeds": Field(float, 0.0, 1.0, label="Keyframe image-embedding weight"),
    "crf": Field(int, 0, 51, label="MP4 compression (CRF)"),
    "vae_tiling": Field(bool, label="VAE tiling"),
    "loras": Field(list, label="LoRAs"),
}


@dataclasses.dataclass(frozen=True)
class JobParams:
    """One job's settings (the pictures travel beside them, as files: see jobs.Job.inputs)."""
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 31337
    seconds: float = 5.0
    window: int = 9
    steps: int = 25
    guidance: float = 10.0
    cfg: float = 1.0
    rescale: float = 0.0
    cache: str = "teacache"          # the official app's "Use TeaCache", on by default there
    preset: str = "official"
    blend_sections: int = 0
    keyframe_embeds: float = 0.0
    crf: int = 16
    vae_tiling: bool = False
    loras: Tuple[Tuple[str, float], ...] = ()   # (file name in the server's LoRA folder, strength)

    def __post_init__(self):
        for name, field in FIELDS.items():
            value = getattr(self, name)
            object.__setattr__(self, name, _checked(name, field, value))

    def to_json(self):
        """A dict of plain JSON values (LoRAs as [name, strength] lists)."""
        out = dataclasses.asdict(self)
        out["loras"] = [[name, strength] for name, strength in self.loras]
        return out

    @classmethod
    def from_json(cls, data):
        """The inverse of to_json: ValueError naming an unknown field, a wrong type or a value out of range; a
        missing field takes its default (a file written by an older version)."""
        if not isinstance(data, dict):
            raise ValueError(f"the parameters must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(map(str, unknown))}")
        return cls(**data)

    def pipeline_kwargs(self):
        """The FramePackPipeline.__call__ arguments these settings give (the pictures, LoRAs and size apart)."""
        return {"negative_prompt": self.negative_prompt or None, "seconds": self.seconds,
                "latent_window_size": self.window, "num_inference_steps": self.steps,
                "guidance_scale": self.guidance, "true_cfg_scale": self.cfg, "guidance_rescale": self.rescale,
                "cache": None if self.cache == "none" else self.cache, "preset": self.preset,
                "blend_sections": self.blend_sections, "keyframe_embeds": self.keyframe_embeds}


def _range_text(field):
    fmt = (lambda v: f"{v:g}") if field.kind is float else str
    return f"between {fmt(field.low)} and {fmt(field.high)}"


def _checked(name, field, value):
    """value as field.kind, or ValueError naming the field (by its label) and what was wrong."""
    label = field.label or name
    if field.kind is list:
        return _checked_loras(label, value)
    if field.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{label}: expected true or false, got {value!r}")
        return value
    if field.kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{label}: expected text, got {type(value).__name__}")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"{label}: {len(value)} characters, at most {MAX_PROMPT_CHARS}")
        if field.choices is not None and value not in field.choices:
            raise ValueError(f"{label}: {value!r} is not one of {', '.join(field.choices)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{label}: expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # an int (JSON's 1e400 digits) is finite but may
        raise ValueError(f"{label}: must be a finite number, got {value}")  # overflow float(): compared as an int
    if field.kind is int and value != int(value):
        raise ValueError(f"{label}: expected a whole number, got {value:g}")
    if not field.low <= value <= field.high:  # before any conversion: a huge int would overflow float()
        shown = f"{value:g}" if isinstance(value, float) else value
        raise ValueError(f"{label} must be {_range_text(field)}, got {shown}")
    value = int(value) if field.kind is int else float(value)
    return value


def _checked_loras(label, value):
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{label}: expected a list of [file name, strength], got {type(value).__name__}")
    if len(value) > MAX_LORAS:
        raise ValueError(f"{label}: {len(value)} LoRAs, at most {MAX_LORAS}")
    out: List[Tuple[str, float]] = []
    for item in value:
        if (not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str)
                or isinstance(item[1], bool) or not isinstance(item[1], (int, float))):
            raise ValueError(f"{label}: each entry must be [file name, strength], got {item!r}")
        name, strength = item
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"{label}: {name!r} is not a file name in the LoRA folder")
        if (isinstance(strength, float) and not math.isfinite(strength)) or abs(strength) > 100:
            raise ValueError(f"{label}: the strength of {name} must be a finite number in [-100, 100], got {strength}")
        out.append((name, float(strength)))
    if len({name for name, _ in out}) != len(out):
        raise ValueError(f"{label}: a LoRA is listed twice")
    return tuple(out)
