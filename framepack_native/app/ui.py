"""The Gradio page of `framepack-native serve`: the official FramePack app's layout on a persistent job queue.

Left: the start image, the prompt, Start / Stop, and the official app's settings (TeaCache, seed, length, steps,
distilled CFG, CRF, VAE tiling), then the end frame and keyframes, LoRAs and the advanced settings. Right: the
latest step's preview ("next latents"), the video that grows after every section, a per-section progress bar, and
the jobs (queued, running, finished: from queue.json, so they survive a restart) with their parameters to load back.
The page polls the queue twice a second; a job runs in the server's worker thread whether a page is open or not.
Bad input is a message above the buttons, never a traceback, and queues nothing.
"""
import html
import json
import secrets
import time
from pathlib import Path

import gradio as gr

from framepack_native.app.params import CACHE_CHOICES, FIELDS, MAX_KEYFRAMES, JobParams
from framepack_native.app.runner import check_job
from framepack_native.cli_checks import FPS

POLL_SECONDS = 0.5
KEYFRAME_SLOTS = 2
TABLE_HEADERS = ["job", "status", "prompt", "seconds", "frames", "elapsed", "created", "message"]
PREVIEW_MIN_HEIGHT = 160  # a small model's preview (8 latent rows) is enlarged by whole factors to be seen
CSS = """
#progress .bar {height: 10px; background: #e5e7eb; border-radius: 5px; overflow: hidden; margin: 4px 0 8px 0}
#progress .bar div {height: 100%; background: #f97316}
#message {color: #b91c1c}
"""
assert KEYFRAME_SLOTS <= MAX_KEYFRAMES


def Picture(**kw):
    """gr.Image whose upload is handed on even when Pillow cannot open it, so that the app's own check names the
    file in the page (Gradio's would fail with a bare "Error"). Patched per instance: a subclass would make Gradio
    write a .pyi stub beside this file."""
    image = gr.Image(**kw)
    strict = image.preprocess

    def preprocess(payload):
        try:
            return strict(payload)
        except Exception:  # noqa: BLE001 - any decoder error: our check reads the file and says what is wrong
            return None if payload is None or payload.path is None else str(payload.path)
    image.preprocess = preprocess
    return image


def Slider(*args, **kw):
    """gr.Slider that hands out-of-range values (an API call; the page's own slider keeps its range) on, so that the
    job's check names the setting and its range in the page's message, not Gradio's bare toast."""
    slider = gr.Slider(*args, **kw)
    slider.preprocess = lambda payload: payload
    return slider


def _slider(name, value, step, **kw):
    field = FIELDS[name]
    return Slider(field.low, field.high, value=value, step=step, label=field.label, elem_id=name.replace("_", "-"),
                  **kw)


def _progress_html(job, live, now):
    """The per-section progress bar and its line, for the job the page shows."""
    if job is None:
        return "<div>No job yet: upload an image, write a prompt and press Start.</div>"
    name = html.escape(job.id)
    if job.status == "queued":
        resumes = " (resumes after its last finished section)" if job.resume else ""
        return f"<div>Job {name}: queued{resumes}</div>"
    if job.status != "running":
        frames = f"; {job.frames} frames ({job.frames / FPS:.2f} s)" if job.frames else ""
        said = f" {html.escape(job.message)}" if job.message else ""
        return f"<div>Job {name}: {job.status}{frames}.{said}</div>"
    phase = live.get("phase", "starting")
    if phase != "sampling":
        return f"<div>Job {name}: {html.escape(phase)}...</div>"
    section, sections, step, steps = (live.get(k, 0) for k in ("section", "sections", "step", "steps"))
    percent = int(100 * step / max(steps, 1))
    elapsed = now - (job.started or now)
    return (f"<div>Job {name}: section {section}/{sections}, step {step}/{steps}; {job.frames} frames so far; "
            f"{elapsed:.0f} s</div><div class='bar'><div style='width: {percent}%'></div></div>")


def _table(jobs):
    rows = []
    for j in reversed(jobs):  # newest first
        elapsed = f"{j.elapsed:.1f} s" if j.elapsed else ""
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created))
        prompt = j.params.prompt if len(j.params.prompt) <= 60 else j.params.prompt[:57] + "..."
        rows.append([j.id, j.status, prompt, f"{j.params.seconds:g}", j.frames, elapsed, created, j.message])
    return rows


def build_app(queue, model):
    """The gr.Blocks of the page, driving `queue` (jobs.JobQueue) for `model` (runner.AppModel)."""
    d = model.defaults()
    inverted = model.sampling_type() == "inverted_anti_drifting"
    loras = model.lora_files()
    # delete_cache: Gradio copies each version of a growing video into its cache; drop copies over an hour old
    with gr.Blocks(title="FramePack (framepack_native)", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown("## FramePack image-to-video" + (" (demo: a tiny model with random weights; the video is "
                                                      "not meaningful)" if model.demo else ""))
        watching = gr.State("")    # the job the right side shows: "" follows the running (else the newest) one
        seen = gr.State({})        # what this page shows already, so unchanged pictures are not sent again
        with gr.Row():
            with gr.Column():
                image = Picture(sources=["upload", "clipboard"], type="filepath", label="Start image",
                                elem_id="image", height=320)
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt", value=d.prompt,
                                    info="timestamps change it over time: [0s-2s: a cat sleeps] [2s: it wakes up]")
                message = gr.Markdown("", elem_id="message")
                with gr.Row():
                    start = gr.Button("Start", variant="primary", elem_id="start")
                    stop = gr.Button("Stop", elem_id="stop")
                cache = gr.Radio(list(CACHE_CHOICES), value=d.cache, label="Cache (faster; slightly changes hands "
                                 "and fine detail)", elem_id="cache")
                with gr.Row():
                    seed = gr.Number(value=d.seed, label="Seed", precision=0, elem_id="seed")
                    randomize = gr.Checkbox(False, label="Random seed for every job", elem_id="randomize")
                seconds = _slider("seconds", d.seconds, 0.1)
                steps = _slider("steps", d.steps, 1, info="changing it is not recommended")
                guidance = _slider("guidance", d.guidance, 0.01)
                crf = _slider("crf", d.crf, 1, info="lower is better; 16 is visually lossless")
                tiling = gr.Checkbox(d.vae_tiling, label="VAE tiling (GPU memory: ~2 GiB instead of ~7 at 640 x 640, "
                                     "slower)", elem_id="vae-tiling")
                gr.Markdown(f"Weights: {'offloaded to the CPU between uses' if model.offload else 'kept on the device'}"
                            f" ({html.escape(model.device)}; `serve --offload` for GPUs under 60 GB)")
                with gr.Accordion("End frame and keyframes", open=False):
                    last = Picture(type="filepath", label="End image (optional)", elem_id="last-image", height=200,
                                   visible=inverted)
                    key_pictures, key_times = [], []
                    for i in range(KEYFRAME_SLOTS):
                        with gr.Row():
                            key_pictures.append(Picture(type="filepath", label=f"Keyframe {i + 1}", height=160,
                                                        elem_id=f"keyframe-{i}"))
                            key_times.append(gr.Number(None, label=f"Keyframe {i + 1} at (seconds)",
                                                       elem_id=f"keyframe-{i}-time"))
                    key_embeds = _slider("keyframe_embeds", d.keyframe_embeds, 0.05)
                with gr.Accordion("LoRAs", open=False, visible=bool(loras)):
                    lora_names = gr.Dropdown(loras, value=[], multiselect=True, label="LoRA files", elem_id="loras")
                    lora_strengths = gr.Textbox("", label="Strengths, in the order chosen (default 1)",
                                                placeholder="1.0, 0.6", elem_id="lora-strengths")
                with gr.Accordion("Advanced", open=False):
                    negative = gr.Textbox(d.negative_prompt, label="Negative prompt (with CFG scale > 1)",
                                          elem_id="negative-prompt")
                    cfg = _slider("cfg", d.cfg, 0.01)
                    rescale = _slider("rescale", d.rescale, 0.01)
                    window = _slider("window", d.window, 1)
                    blend = _slider("blend_sections", d.blend_sections, 1)
                    preset = gr.Radio(list(FIELDS["preset"].choices), value=d.preset, label="Preset",
                                      elem_id="preset")
            with gr.Column():
                preview = gr.Image(label="Next latents", interactive=False, elem_id="preview", height=200)
                video = gr.Video(label="Finished frames", autoplay=True, loop=True, interactive=False,
                                 elem_id="video", height=360)
                progress = gr.HTML(_progress_html(None, {}, 0), elem_id="progress")
                gr.Markdown(f"Outputs: `{html.escape(str(queue.folder))}` (each video with its parameters as JSON)")
                jobs = gr.Dataframe(headers=TABLE_HEADERS, value=_table(queue.jobs()), interactive=False,
                                    elem_id="jobs", wrap=True,
                                    column_widths=["17%", "8%", "22%", "7%", "7%", "8%", "11%", "20%"])
                with gr.Row():
                    picked = gr.Dropdown([j.id for j in reversed(queue.jobs())], value=None, label="Job",
                                         elem_id="job-select", allow_custom_value=False)
                    show = gr.Button("Show", elem_id="show")
                    load = gr.Button("Load its parameters", elem_id="load")
                    cancel = gr.Button("Cancel if queued", elem_id="cancel")
                    resume = gr.Button("Continue if stopped", elem_id="continue")
                params_file = gr.File(label="Load parameters from a job's JSON", file_types=[".json"],
                                      type="filepath", elem_id="params-file")

        fields = [prompt, negative, seed, seconds, window, steps, guidance, cfg, rescale, cache, preset, blend,
                  key_embeds, crf, tiling]
        names = ["prompt", "negative_prompt", "seed", "seconds", "window", "steps", "guidance", "cfg", "rescale",
                 "cache", "preset", "blend_sections", "keyframe_embeds", "crf", "vae_tiling"]

        def submit(picture, end, random_seed, chosen, strengths, *values):
            values = list(values)
            key_values, values = values[:2 * KEYFRAME_SLOTS], values[2 * KEYFRAME_SLOTS:]
            try:
                settings = dict(zip(names, values))
                if random_seed:
                    settings["seed"] = secrets.randbelow(2**32)
                if settings["seed"] is None:
                    raise ValueError("Seed: enter a whole number")
                settings["loras"] = _lora_list(chosen, strengths)
                params = JobParams(**settings)
                keys = []
                for i in range(KEYFRAME_SLOTS):
                    pic, t = key_values[i], key_values[KEYFRAME_SLOTS + i]
                    if pic is not None:
                        if t is None:
                            raise ValueError(f"Keyframe {i + 1}: give its time in seconds")
                        keys.append((float(t), pic))
                image_, last_, keys_ = check_job(model, params, picture, end if inverted else None, keys)
                job = queue.submit(params, image_, last_, keys_)
            except (ValueError, OSError) as e:  # OSError: the outputs folder refused the job's files (a full disk)
                said = str(e).splitlines()[0] if str(e) else type(e).__name__
                return f"**Not started:** {html.escape(said)}", gr.skip(), gr.skip()
            ahead = sum(j.status in ("queued", "running") for j in queue.jobs()) - 1
            said = f"Queued job {job.id}" + (f" behind {ahead} other(s)" if ahead else "") + "."
            return said, params.seed, ""

        start.click(submit, [image, last, randomize, lora_names, lora_strengths, *key_pictures, *key_times,
                             *fields], [message, seed, watching])

        def stop_running():
            running = queue.running()
            if running is None:
                return "Nothing is running."
            queue.stop(running.id)
            return f"Stopping job {running.id} at its next step; its finished sections stay."

        stop.click(stop_running, None, message)

        def tick(watch, shown):
            all_jobs = queue.jobs()
            job = next((j for j in all_jobs if j.id == watch), None) if watch else None
            if job is None:
                job = next((j for j in all_jobs if j.status == "running"), all_jobs[-1] if all_jobs else None)
            live = queue.live_state(job.id) if job is not None else {}
            shown = dict(shown or {})
            key = job.id if job else ""
            out_preview = gr.skip()
            if live.get("preview") is not None and shown.get("preview") != [key, live["version"]]:
                out_preview, shown["preview"] = _enlarged(live["preview"]), [key, live["version"]]
            elif job is not None and not live and shown.get("preview", [""])[0] != key:
                out_preview, shown["preview"] = None, [key, -1]
            out_video = gr.skip()
            path = queue.folder / job.output if job is not None and job.output else None
            state = (key, job.frames) if job is not None else ("", 0)
            if shown.get("video") != list(state):
                out_video = str(path) if path is not None and path.is_file() else None
                shown["video"] = list(state)
            table = _table(all_jobs)
            out_table, out_pick = gr.skip(), gr.skip()
            if shown.get("table") != table:
                out_table, shown["table"] = table, table
                ids = [row[0] for row in table]
                if shown.get("ids") != ids:
                    out_pick, shown["ids"] = gr.update(choices=ids), ids
            return out_preview, out_video, _progress_html(job, live, time.time()), out_table, out_pick, shown

        timer = gr.Timer(POLL_SECONDS)
        timer.tick(tick, [watching, seen], [preview, video, progress, jobs, picked, seen], show_progress="hidden",
                   queue=False)
        show.click(lambda picked_id: picked_id or "", picked, watching)

        def cancel_job(picked_id):
            job = queue.get(picked_id) if picked_id else None
            if job is None or job.status != "queued":
                return "Pick a queued job to cancel (Stop ends the running one)."
            queue.stop(job.id)
            return f"Cancelled job {job.id}."

        cancel.click(cancel_job, picked, message)

        def continue_job(picked_id):
            if picked_id and queue.resume(picked_id):
                return f"Job {picked_id} continues after its last finished section."
            return "Pick a stopped or failed job that finished a section to continue it."

        resume.click(continue_job, picked, message)
        outputs = [message, image, last, *key_pictures, *key_times, lora_names, lora_strengths, randomize, *fields]

        def load_from(data, where):
            try:
                params = JobParams.from_json(data.get("params") if isinstance(data, dict) else None)
            except ValueError as e:
                return [f"**Cannot load {html.escape(where)}:** {html.escape(str(e))}"] + [gr.skip()] * (
                    len(outputs) - 1)
            pictures = _pictures(queue.folder, data.get("inputs"))
            keys = pictures["keyframes"] + [(None, None)] * KEYFRAME_SLOTS
            kept = [(n, s) for n, s in params.loras if n in loras]
            missing = [n for n, _ in params.loras if n not in loras]
            said = f"Loaded the parameters of {html.escape(where)}." + (
                f" Not in the LoRA folder, left out: {html.escape(', '.join(missing))}." if missing else "")
            return ([said, pictures["image"], pictures["last_image"]]
                    + [p for _, p in keys[:KEYFRAME_SLOTS]] + [t for t, _ in keys[:KEYFRAME_SLOTS]]
                    + [gr.update(value=[n for n, _ in kept]), ", ".join(f"{s:g}" for _, s in kept), False]
                    + [getattr(params, n) for n in names])

        def load_job(picked_id):
            job = queue.get(picked_id) if picked_id else None
            if job is None:
                return ["Pick a job to load its parameters."] + [gr.skip()] * (len(outputs) - 1)
            return load_from(job.to_json(), f"job {job.id}")

        def load_file(path):
            if path is None:
                return [gr.skip()] * len(outputs)
            try:
                text = Path(path).read_text(encoding="utf-8")
                data = json.loads(text)
            except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError too
                return [f"**Cannot load {html.escape(Path(path).name)}:** not a job's JSON ({html.escape(str(e))})"
                        ] + [gr.skip()] * (len(outputs) - 1)
            return load_from(data, Path(path).name)

        load.click(load_job, picked, outputs)
        params_file.upload(load_file, params_file, outputs)
    return app


def _enlarged(picture):
    """An (h, w, 3) uint8 preview repeated by the whole factor that makes it at least PREVIEW_MIN_HEIGHT tall."""
    factor = max(1, -(-PREVIEW_MIN_HEIGHT // max(picture.shape[0], 1)))
    return picture.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else picture


def _lora_list(chosen, strengths):
    """[(name, strength)] from the picked files and the strengths text ("1, 0.6"; missing ones are 1)."""
    chosen = list(chosen or [])
    parts = [s.strip() for s in (strengths or "").split(",") if s.strip()]
    if len(parts) > len(chosen):
        raise ValueError(f"LoRAs: {len(parts)} strengths for {len(chosen)} LoRA file(s)")
    values = []
    for text in parts:
        try:
            values.append(float(text))
        except ValueError:
            raise ValueError(f"LoRAs: strength {text!r} is not a number") from None
    values += [1.0] * (len(chosen) - len(values))
    return [[name, value] for name, value in zip(chosen, values)]


def _pictures(folder, inputs):
    """The input pictures a job's JSON names, as paths that exist under the outputs folder (others: None)."""
    inputs = inputs if isinstance(inputs, dict) else {}

    def found(rel):
        if not isinstance(rel, str):
            return None
        path = (folder / rel).resolve()
        inside = folder.resolve() in path.parents
        return str(path) if inside and path.is_file() else None

    items = inputs.get("keyframes") if isinstance(inputs.get("keyframes"), list) else []
    keys = [(float(item[0]), found(item[1])) for item in items if isinstance(item, list) and len(item) == 2
            and isinstance(item[0], (int, float)) and not isinstance(item[0], bool) and abs(item[0]) < 1e6]
    return {"image": found(inputs.get("image")), "last_image": found(inputs.get("last_image")),
            "keyframes": [(t, p) for t, p in keys if p is not None][:KEYFRAME_SLOTS]}
