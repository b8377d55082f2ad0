"""A run's conditioning through the pipeline's encoders, section by section (framepack_native.conditioning decides
what each section gets; this encodes it, every distinct prompt and picture once, in a fixed order).

Random numbers: the start image's posterior, then the last image's, then each keyframe's in time order, all from
the posterior generator (so a run without keyframes draws exactly as before them).
"""

from framepack_native.prompt_schedule import blend_embeddings
from framepack_native.section_loop import SectionInputs


def section_texts(pipe, prompt_plan, dtype):
    """PromptPlan -> per section (generation order) (txt (B, L, D), mask (B, L), pooled (B, P), label, weights):
    a batch is encoded once for all; a schedule's texts once each, blends mixed once per distinct blend."""
    if prompt_plan.batch:
        encoded = pipe._encode_text(list(prompt_plan.texts), dtype)
        return lambda k: (*encoded, prompt_plan.label(k), None)
    used = {i for ws in prompt_plan.weights for i, _ in ws}  # a default no section starts in is not encoded
    encoded = [pipe._encode_text([text], dtype) if i in used else None for i, text in enumerate(prompt_plan.texts)]
    mixed = {}
    for ws in prompt_plan.weights:
        if ws not in mixed:
            mixed[ws] = blend_embeddings([encoded[i] for i, _ in ws], [w for _, w in ws])

    def at(k):
        ws = prompt_plan.weights[k]
        weights = None if len(ws) == 1 else [(prompt_plan.texts[i], w) for i, w in ws]
        return (*mixed[ws], prompt_plan.label(k), weights)
    return at


def section_inputs(plan, texts, neg, image_embeds, image_latents, keyframes, keyframe_embeds, encode, dtype):
    """-> [SectionInputs] per section of the plan (generation order).

    texts: section_texts(...); neg: the negative (txt, mask, pooled) or None (no CFG); image_embeds (B, 729, 1152) / image_latents
    (B, C, 1, h, w): the start image's (embeds already averaged with the last image's where asked);
    keyframes: [conditioning.Keyframe] of sections; encode(image) -> (embeds, latents) as the start image's."""
    anchors = {}
    for key in keyframes:  # time order: the posterior draws follow it
        embeds, latents = encode(key.image)
        if keyframe_embeds > 0:
            embeds = ((1 - keyframe_embeds) * image_embeds.float() + keyframe_embeds * embeds.float()).to(dtype)
        else:
            embeds = image_embeds
        anchors[key.section] = (embeds, latents)
    out = []
    for s in plan:
        txt, mask, pooled, label, weights = texts(s.index)
        embeds, start = anchors.get(s.index, (image_embeds, image_latents))
        out.append(SectionInputs(txt, mask, pooled, neg, embeds, start, label, weights))
    return out


def encode_context(pipe, frames, device):
    """Video frames (F, 3, H, W) float in [0, 1] -> their VAE latents (1, C, (F - 1) // 4 + 1, h, w) float32,
    scaled: the posterior mean (the frames are known content, not a sample to draw)."""
    pixels = (frames.float() * 2 - 1).permute(1, 0, 2, 3)[None].to(device)  # (1, 3, F, H, W) in [-1, 1]
    with pipe._on_device(pipe.vae):
        posterior = pipe.vae.encode(pixels.to(pipe.vae.dtype))
    return (posterior.mean * pipe.vae.config.scaling_factor).float()


def as_batch(t, batch):
    """(1, ...) -> (batch, ...) (a view)."""
    return t.expand(batch, *t.shape[1:]) if t.shape[0] != batch else t
