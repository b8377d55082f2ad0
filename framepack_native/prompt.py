"""Prompt encoding for HunyuanVideo / FramePack: the Llama-3 chat template, its crop, and the CLIP pooled vector.

As diffusers' HunyuanVideoFramepackPipeline.encode_prompt: the template wraps each prompt, Llama-3 runs to
hidden_states[-3] (the last two layers are skipped), the first `crop_start` (95) template tokens are cut
off, leaving max_sequence_length (256) tokens + mask; CLIP-L encodes the raw prompt (77 tokens) and its
pooled end-token state conditions the timestep embedding.
"""
import torch

HUNYUAN_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
CROP_START = 95               # <|begin_of_text|> + the template's 94 tokens before the prompt
MAX_SEQUENCE_LENGTH = 256     # prompt tokens kept after the crop
HIDDEN_STATE_INDEX = -3       # diffusers' num_hidden_layers_to_skip = 2
CLIP_MAX_LENGTH = 77


def _prompts(prompt):
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r:.80}")
    return prompts


def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def encode_llama(prompt, tokenizer, model, *, template=HUNYUAN_TEMPLATE, crop_start=CROP_START,
                 max_sequence_length=MAX_SEQUENCE_LENGTH, hidden_state_index=HIDDEN_STATE_INDEX):
    """Templated prompts -> Llama hidden states (B, max_sequence_length, D) in the model dtype, mask (B, L) bool.

    Tokenized to crop_start + max_sequence_length tokens (padded, truncated), encoded, then cropped.
    """
    prompts = _prompts(prompt)
    if template.count("{}") != 1:
        raise ValueError(f"the prompt template must hold exactly one '{{}}', it holds {template.count('{}')}")
    if not isinstance(crop_start, int) or crop_start < 0:
        raise ValueError(f"crop_start must be a non-negative int, got {crop_start!r}")
    if not isinstance(max_sequence_length, int) or max_sequence_length < 1:
        raise ValueError(f"max_sequence_length must be a positive int, got {max_sequence_length!r}")
    ids, mask = tokenizer([template.format(p) for p in prompts], crop_start + max_sequence_length)
    device = _device(model)
    ids, mask = ids.to(device), mask.to(device)
    hidden = model(ids, mask, hidden_state_index=hidden_state_index)  # (B, crop + L, D)
    return hidden[:, crop_start:], mask[:, crop_start:].bool()


@torch.no_grad()
def encode_clip(prompt, tokenizer, model, *, max_length=CLIP_MAX_LENGTH):
    """Raw prompts -> CLIP pooled output (B, D) in the model dtype (77 tokens, truncated keeping the end token)."""
    ids, _ = tokenizer(_prompts(prompt), max_length)
    return model(ids.to(_device(model)))[1]


def encode_prompt(prompt, llama_tokenizer, llama, clip_tokenizer, clip, *, template=HUNYUAN_TEMPLATE,
                  crop_start=CROP_START, max_sequence_length=MAX_SEQUENCE_LENGTH,
                  hidden_state_index=HIDDEN_STATE_INDEX):
    """prompt (str or B str) -> (Llama states (B, L, D), mask (B, L) bool, CLIP pooled (B, Dc)); L = 256."""
    embeds, mask = encode_llama(prompt, llama_tokenizer, llama, template=template, crop_start=crop_start,
                                max_sequence_length=max_sequence_length, hidden_state_index=hidden_state_index)
    return embeds, mask, encode_clip(prompt, clip_tokenizer, clip)
