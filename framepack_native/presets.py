"""The two named presets: everything around the model that the official app and diffusers do differently.

"official" reproduces the official app's worker loop (lllyasviel/FramePack demo_gradio.py `worker()`,
demo_gradio_f1.py for vanilla sampling); "diffusers" reproduces diffusers' HunyuanVideoFramepackPipeline draw for
draw. Any explicit argument of FramePackPipeline.__call__ / from_pretrained overrides its preset's value.
"""
import dataclasses

import torch

COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "image_encoder")
FPS = 30


@dataclasses.dataclass(frozen=True)
class Preset:
    """One preset's choices; the README's preset table lists them field by field."""
    name: str
    sampler: str                  # "unipc" (FramePack's) | "euler" (diffusers' scheduler)
    schedule: str                 # "resolution": the app's mu = lerp(seq len) capped at ln 7; "scheduler": its config
    image_fit: str                # "crop": scale to cover, centre crop (the app's resize_and_center_crop), the
                                  # uint8 picture itself to SigLIP; "stretch": diffusers' resize, SigLIP from floats
    length: str                   # "sections": round(seconds * 30 / (4 * window)) sections; "frames": seconds * 30
    cfg_negative: "str | None"    # the negative prompt under CFG when none is given (None: no CFG without one)
    seed: "int | None"            # without a generator: this seed (None: torch's global RNG)
    posterior: str                # "second_generator": seeded initial_seed + 1; "generator": drawn before the noise
    app_numerics: bool            # the app's fm_wrapper order of casts: sigma * 1000 and guidance * 1000 scaled in
                                  # float then cast to the model dtype, CFG combined in float32, CFG whenever
                                  # cfg != 1, latents unscaled before the cast to the VAE's dtype
    dtypes_cuda: dict             # per component, on CUDA
    fp32_output: bool             # on CUDA: the transformer's final Linear in float32 (high_quality_fp32_output)

    def dtypes(self, device):
        """{component: dtype} for a device: the CUDA table there, float32 everywhere on the CPU."""
        if torch.device(device).type == "cuda":
            return dict(self.dtypes_cuda)
        return {name: torch.float32 for name in COMPONENTS}


PRESETS = {
    "official": Preset(
        name="official", sampler="unipc", schedule="resolution", image_fit="crop",
        length="sections", cfg_negative="", seed=31337, posterior="second_generator", app_numerics=True,
        dtypes_cuda={"transformer": torch.bfloat16, "vae": torch.float16, "text_encoder": torch.float16,
                     "text_encoder_2": torch.float16, "image_encoder": torch.float16},
        fp32_output=True),
    "diffusers": Preset(
        name="diffusers", sampler="euler", schedule="scheduler", image_fit="stretch",
        length="frames", cfg_negative=None, seed=None, posterior="generator", app_numerics=False,
        dtypes_cuda={name: torch.bfloat16 for name in COMPONENTS}, fp32_output=False),
}


def get_preset(name):
    """The Preset called `name`; ValueError naming the known ones."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {tuple(PRESETS)}")
    return PRESETS[name]


def section_count(seconds, latent_window_size, length="sections", temporal_ratio=4):
    """Sections for a video of `seconds` at 30 fps.

    "sections" (the official app): max(round(seconds * 30 / (4 * window)), 1), Python's round (half to even);
    "frames" (ours and diffusers' num_frames): enough sections of (window - 1) * 4 + 1 frames for seconds * 30.
    """
    if length == "sections":
        return int(max(round(seconds * FPS / (latent_window_size * temporal_ratio)), 1))
    from framepack_native.sections import num_sections
    return num_sections(round(seconds * FPS), latent_window_size, temporal_ratio)


def resolve_dtypes(dtype, device, preset):
    """from_pretrained's dtype argument -> ({component: dtype}, fp32_output).

    None: the preset's table for the device; one torch.dtype: every component (the fp32 output head too when the
    preset has one and the dtype is 16-bit); a mapping: those components, the rest from the preset.
    """
    table, fp32_output = preset.dtypes(device), preset.fp32_output and torch.device(device).type == "cuda"
    if dtype is None:
        return table, fp32_output
    if isinstance(dtype, torch.dtype):
        _check_dtype("dtype", dtype)
        return {name: dtype for name in COMPONENTS}, preset.fp32_output and dtype != torch.float32
    if isinstance(dtype, dict):
        unknown = sorted(set(dtype) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"dtype mapping names unknown components {unknown}; expected some of {COMPONENTS}")
        for name, value in dtype.items():
            _check_dtype(f"dtype[{name!r}]", value)
        table.update(dtype)
        return table, preset.fp32_output and table["transformer"] != torch.float32
    raise ValueError(f"dtype must be None, a torch.dtype or a {{component: dtype}} mapping, got {dtype!r}")


def _check_dtype(name, value):
    if not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise ValueError(f"{name} must be a floating-point torch.dtype (e.g. torch.bfloat16), got {value!r}")


def second_generator(generator):
    """The official preset's posterior generator: seeded initial_seed + 1 (the app draws it from the global RNG)."""
    if isinstance(generator, list):
        return [second_generator(g) for g in generator]
    return torch.Generator(generator.device).manual_seed((generator.initial_seed() + 1) % 2**64)
