"""One web-app job through FramePackPipeline, and the checks a job passes before it enters the queue.

The run is the CLI's: the pipeline's callback gives every step's preview (the predicted clean latents through the
official app's latent-to-RGB map) and progress, and after every finished section the whole video so far is written to
OUTPUTS/ID.mp4 (atomically: a viewer never sees half a file), with the run state in ID.mp4.state so that a job the
server was running when it stopped resumes after its last finished section. Stop raises JobStopped from the next
step's callback: the finished sections stay in the mp4.
"""
import dataclasses
from pathlib import Path
from typing import Optional

from framepack_native.app.jobs import JobStopped
from framepack_native.app.params import JobParams
from framepack_native.cli_checks import FPS

DEMO_SIZE = (64, 96)  # the demo model's own size (a 640 bucket would take minutes a section on a CPU)
DEMO_WEIGHTS_SEED = 0


@dataclasses.dataclass
class AppModel:
    """What the server runs: the demo (model_dir None) or a converted folder, on `device`, and how."""
    model_dir: Optional[str] = None
    device: str = "cpu"
    offload: bool = False
    dtype: Optional[str] = None         # bf16 | fp16 | fp32 | fp8 | None (the preset's)
    lora_dir: Optional[str] = None

    @property
    def demo(self):
        return self.model_dir is None

    @property
    def size(self):
        """(height, width) every job uses, or None: the 640 bucket nearest the start image's aspect."""
        return DEMO_SIZE if self.demo else None

    def sampling_type(self):
        if self.demo:
            return "inverted_anti_drifting"
        from framepack_native.models.loading import read_manifest
        return read_manifest(self.model_dir).get("sampling_type") or "inverted_anti_drifting"

    def defaults(self):
        """The page's starting values: the official app's, with the demo model's 8 steps under --demo."""
        return JobParams(steps=8) if self.demo else JobParams()

    def lora_files(self):
        """The LoRA files the page offers: *.safetensors in the LoRA folder, by name."""
        if not self.lora_dir:
            return []
        return sorted(p.name for p in Path(self.lora_dir).iterdir() if p.suffix == ".safetensors" and p.is_file())

    def lora_path(self, name):
        if name not in self.lora_files():
            raise ValueError(f"LoRA {name!r}: no such file in the LoRA folder {self.lora_dir}")
        return Path(self.lora_dir) / name

    def describe(self):
        """What ID.json records of the server's model."""
        return {"model": "demo (random weights)" if self.demo else str(Path(self.model_dir).resolve()),
                "device": self.device, "offload": self.offload, "dtype": self.dtype,
                "sampling_type": self.sampling_type(), "fps": FPS}

    def load(self):
        if self.demo:
            from framepack_native.demo import demo_pipeline
            return demo_pipeline(seed=DEMO_WEIGHTS_SEED, device=self.device)
        from framepack_native import FramePackPipeline
        from framepack_native.cli_checks import torch_dtype
        quantize = {"transformer": "fp8"} if self.dtype == "fp8" else None
        return FramePackPipeline.from_pretrained(self.model_dir, dtype=torch_dtype(self.dtype), device=self.device,
                                                 offload=self.offload, quantize=quantize)


def load_picture(value, label):
    """A picture from the page (a path, PIL image or array) as PIL RGB; ValueError naming the input."""
    from framepack_native.image import load_image
    try:
        picture = load_image(value)
    except ValueError as e:
        name = Path(value).name if isinstance(value, (str, Path)) else "the picture"
        raise ValueError(f"{label}: {str(e).replace(str(value), name)}") from None
    if not hasattr(picture, "mode"):  # a float array: as the page would send it, in [0, 1]
        import PIL.Image
        array = (picture.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        picture = PIL.Image.fromarray(array)
    return picture


def check_job(model, params, image, last_image=None, keyframes=()):
    """Everything a job is checked for before it is queued; ValueError naming the culprit, in one line. Returns
    the pictures as PIL: (image, last_image or None, [(seconds, picture)])."""
    from framepack_native.arguments import check_arguments
    from framepack_native.cli_control import check_plan
    from framepack_native.conditioning import check_keyframe_embeds
    from framepack_native.lora import check_lora_file
    from framepack_native.presets import get_preset

    if image is None:
        raise ValueError("Start image: upload the picture the video starts from")
    image = load_picture(image, "Start image")
    last = None if last_image is None else load_picture(last_image, "End image")
    sampling = model.sampling_type()
    if last is not None and sampling != "inverted_anti_drifting":
        raise ValueError("End image: this model samples forward (vanilla / F1) and cannot aim at an end image")
    keys = []
    for seconds, picture in keyframes:
        keys.append((seconds, load_picture(picture, f"Keyframe at {seconds:g} s")))
    if len({s for s, _ in keys}) != len(keys):
        raise ValueError("Keyframes: two keyframes at the same time")
    size = model.size or (None, None)
    check_arguments(params.prompt, last, *size, None, params.window, params.steps, sampling,
                    get_preset(params.preset).sampler, params.seconds, params.negative_prompt)
    check_keyframe_embeds(params.keyframe_embeds)
    check_plan(params.preset, sampling, params.seconds, None, params.window, params.prompt, params.blend_sections,
               dict(keys), last)
    for name, _ in params.loras:
        check_lora_file(model.lora_path(name))
    return image, last, keys


class Runner:
    """runner(job, queue) for jobs.JobQueue: the pipeline is loaded once (load()) and kept."""

    def __init__(self, model):
        self.model, self.pipe = model, None

    def load(self):
        if self.pipe is None:
            self.pipe = self.model.load()
        return self.pipe

    def __call__(self, job, queue):
        import torch

        from framepack_native.image import load_image
        from framepack_native.video import write_mp4

        if queue.should_stop(job):
            raise JobStopped()
        queue.progress(job, phase="loading the model" if self.pipe is None else "encoding")
        pipe = self.load()
        p, folder = job.params, queue.folder
        image = load_image(folder / job.inputs["image"])
        last = job.inputs.get("last_image")
        last = None if last is None else load_image(folder / last)
        keyframes = {float(s): load_image(folder / rel) for s, rel in job.inputs.get("keyframes", [])} or None
        out, state = folder / f"{job.id}.mp4", folder / f"{job.id}.mp4.state"
        written = []

        def callback(event):
            if event["kind"] == "step":
                if queue.should_stop(job):
                    raise JobStopped()
                preview = event["preview"]
                queue.progress(job, phase="sampling", section=event["section"] + 1, sections=event["sections"],
                               step=event["step"] + 1, steps=event["steps"],
                               preview=None if preview is None else preview.numpy())
                return
            frames = event["video"]()  # a finished (or, resuming, the restored) section: the whole video so far
            done = event["sections_done"] if event["kind"] == "resume" else event["section"] + 1
            queue.progress(job, phase="writing the video", section=done, sections=event["sections"])
            write_mp4(out, frames[0], fps=FPS, crf=p.crf)
            written[:] = [frames.shape[1]]
            queue.section_written(job, frames.shape[1], done, event["sections"])

        if p.vae_tiling:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        height, width = self.model.size or (None, None)
        try:
            for name, strength in p.loras:  # merged for this job, removed after it bit for bit
                pipe.load_lora(self.model.lora_path(name), strength)
            video = pipe(image, p.prompt, last_image=last, keyframes=keyframes, height=height, width=width,
                         generator=torch.Generator().manual_seed(p.seed), output_type="uint8", callback=callback,
                         state_dir=state, resume=job.resume and (state / "state.json").is_file(),
                         **p.pipeline_kwargs())
        except torch.cuda.OutOfMemoryError as e:
            remedies = ([] if p.vae_tiling else ["tick VAE tiling"]) + (
                [] if self.model.offload else ["restart the server with --offload"])
            raise RuntimeError("out of GPU memory" + (f": {' or '.join(remedies)}" if remedies else "")) from e
        except (MemoryError, RuntimeError) as e:
            from framepack_native.cli import _out_of_memory
            if isinstance(e, MemoryError) or _out_of_memory(e):
                raise RuntimeError("out of host memory (RAM): close other programs or make a shorter video") from e
            raise
        finally:
            if p.loras:
                pipe.unload_lora()
        if written != [video.shape[1]]:  # a resumed job that was already complete
            write_mp4(out, video[0], fps=FPS, crf=p.crf)
            known = queue.get(job.id)
            queue.section_written(job, video.shape[1], known.sections or 0, known.sections or 0)
        return video.shape[1]

    def finished(self, job, queue):
        """After the queue recorded the job done: its run state is not needed any more (only its own files go)."""
        from framepack_native.run_state import RunState
        RunState(queue.folder / f"{job.id}.mp4.state", {}, 0).remove()
