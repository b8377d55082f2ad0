"""Config variants transformers / diffusers accept for our five architectures: each converts and matches the
reference (float32 CPU, rel. L2 < 1e-4, perturbed random weights, save_pretrained -> weights_convert ->
from_pretrained), or is refused with a ConversionError naming the field. Includes the configs diffusers' own
FramePack pipeline test builds (tests/pipelines/hunyuan_video/test_hunyuan_video_framepack.py)."""
import json

import pytest
import torch

import weights_convert
from framepack_native.models import CLIPTextEncoder, FramePackTransformer, LlamaTextEncoder, SiglipVisionEncoder
from framepack_native.models.activations import ACTIVATIONS, LEARNED
from framepack_native.models.vae import ACT_FNS, HunyuanVideoVAE
from tests.reference.common import perturb_, rel_l2
from tests.reference.encoders import CLIP_TINY, SIGLIP_TINY, load_reference
from tests.reference.transformer import load as load_transformer
from tests.reference.transformer import make_inputs, reference_forward
from weights_convert import ConversionError

TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py

# diffusers' FramePack pipeline test components (get_dummy_components), as config dicts.
DIFFUSERS_LLAMA = dict(bos_token_id=0, eos_token_id=2, hidden_size=16, intermediate_size=37, layer_norm_eps=1e-05,
                       num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=1000, hidden_act="gelu",
                       projection_dim=32)
DIFFUSERS_CLIP = dict(DIFFUSERS_LLAMA, hidden_size=8)
DIFFUSERS_TRANSFORMER = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
                             num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
                             guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
                             image_condition_type=None, has_image_proj=True, image_proj_dim=32,
                             has_clean_x_embedder=True)
DIFFUSERS_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                     layers_per_block=1, act_fn="silu", norm_num_groups=4, scaling_factor=0.476986,
                     spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True)

LLAMA = dict(vocab_size=200, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=16, rope_theta=10000.0)


def _save(model, path, seed=0):
    perturb_(model.eval(), seed)
    model.save_pretrained(path)
    return path


def _convert(src, tmp_path, cls, edit=None):
    """Convert the saved folder `src` (its config.json first passed through edit(dict)) and load it in float32."""
    if edit is not None:
        path = src / "config.json"
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    dst = tmp_path / "native"
    weights_convert.convert(src, dst)
    return cls.from_pretrained(dst, dtype=torch.float32, device="cpu")


def _refused(tmp_path, config, *words):
    """Converting a folder holding only this config.json raises a one-line ConversionError with these words."""
    src = tmp_path / f"src_{len(list(tmp_path.iterdir()))}"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError) as info:
        weights_convert.convert(src, tmp_path / "refused")
    message = str(info.value)
    assert all(w in message for w in words), message
    assert "\n" not in message


# ---- activations -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_transformers_act2fn(name):
    from transformers.activations import ACT2FN
    x = torch.cat((torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 4,
                   torch.tensor([0.0, -0.0, 1e-8, -1e-8, 30.0, -30.0, 0.707107])))
    torch.testing.assert_close(ACTIVATIONS[name](x), ACT2FN[name](x), rtol=1e-6, atol=1e-7)


def test_every_parameter_free_act2fn_entry_is_supported():
    from transformers.activations import ACT2CLS
    assert set(ACT2CLS) == set(ACTIVATIONS) | set(LEARNED)


@pytest.mark.parametrize("name", ACT_FNS)
def test_vae_activation_matches_diffusers(name):
    from diffusers.models.activations import get_activation
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 4
    torch.testing.assert_close(ACTIVATIONS[name](x), get_activation(name)(x), rtol=1e-6, atol=1e-7)


# ---- Llama ---------------------------------------------------------------------------------------------------

def _llama_parity(tmp_path, config, lengths=(13, 9), edit=None):
    from transformers import LlamaConfig, LlamaModel
    src = _save(LlamaModel(LlamaConfig(**config)), tmp_path / "src")
    ours = _convert(src, tmp_path, LlamaTextEncoder, edit)
    L = max(lengths)
    g = torch.Generator().manual_seed(L)
    ids = torch.randint(0, config["vocab_size"], (len(lengths), L), generator=g)
    mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    ref = load_reference("LlamaModel", src)
    with torch.no_grad():
        hidden = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for index in (-1, 1):
            err = rel_l2(ours(ids, mask, hidden_state_index=index), hidden[index])
            assert err < TOL, f"hidden_state_index {index}: rel L2 {err:.2e}"
    return ours


def test_llama_of_diffusers_framepack_pipeline_test(tmp_path):
    ours = _llama_parity(tmp_path, DIFFUSERS_LLAMA)
    assert ours.config.hidden_act == "gelu" and ours.config.head_dim == 4


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_llama_hidden_act(tmp_path, act):
    assert _llama_parity(tmp_path, dict(LLAMA, hidden_act=act)).config.hidden_act == act


LLAMA_ROPE = {  # rope_parameters; lengths past max_position_embeddings (16) exercise dynamic and longrope
    "linear": dict(rope_type="linear", factor=4.0),
    "dynamic-short": dict(rope_type="dynamic", factor=2.0),
    "dynamic-long": dict(rope_type="dynamic", factor=2.0),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=8),
    "yarn-mscale": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=8, mscale=0.7,
                        mscale_all_dim=0.3, beta_fast=16.0, beta_slow=2.0, truncate=False),
    "longrope-short": dict(rope_type="longrope", original_max_position_embeddings=16, factor=4.0,
                           short_factor=[1.0, 1.1, 1.3, 2.0], long_factor=[1.0, 2.0, 4.0, 8.0]),
    "longrope-long": dict(rope_type="longrope", original_max_position_embeddings=16, factor=4.0,
                          short_factor=[1.0, 1.1, 1.3, 2.0], long_factor=[1.0, 2.0, 4.0, 8.0]),
    "proportional": dict(rope_type="proportional", partial_rotary_factor=0.5, factor=2.0),
    "llama3-partial-1": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=8, partial_rotary_factor=1.0),
}


@pytest.mark.parametrize("variant", sorted(LLAMA_ROPE))
def test_llama_rope_types(tmp_path, variant):
    lengths = (37, 20) if variant.endswith("long") else (13, 9)
    ours = _llama_parity(tmp_path, dict(LLAMA, rope_parameters=dict(LLAMA_ROPE[variant])), lengths)
    assert ours.config.rope_type == LLAMA_ROPE[variant]["rope_type"]


def test_llama_v4_rope_scaling_and_ignored_fields(tmp_path):
    """A transformers-4 config.json: rope_scaling {"type": ...} + rope_theta, no head_dim / num_key_value_heads,
    plus fields without effect on LlamaModel (pretraining_tp, tie_word_embeddings, partial_rotary_factor with the
    default rope, which transformers' default init ignores)."""
    def v4(doc):
        doc = {k: v for k, v in doc.items() if k not in ("rope_parameters", "head_dim", "num_key_value_heads")}
        return dict(doc, rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=5000.0, pretraining_tp=2,
                    tie_word_embeddings=True)
    config = {k: v for k, v in LLAMA.items() if k not in ("head_dim", "num_key_value_heads")}
    ours = _llama_parity(tmp_path, dict(config, rope_parameters=dict(rope_type="linear", factor=2.0,
                                                                      rope_theta=5000.0)), edit=v4)
    assert (ours.config.head_dim, ours.config.num_key_value_heads, ours.config.rope_factor) == (8, 4, 2.0)


def test_llama_default_rope_ignores_partial_rotary_factor(tmp_path):
    _llama_parity(tmp_path, dict(LLAMA, partial_rotary_factor=0.5))


@pytest.mark.parametrize("extra, words", [
    (dict(hidden_act="prelu"), ("hidden_act", "'prelu'", "weights")),
    (dict(hidden_act="xielu"), ("hidden_act", "'xielu'", "weights")),
    (dict(hidden_act="gelu_bogus"), ("hidden_act", "'gelu_bogus'", "expected one of")),
    (dict(rope_parameters=dict(rope_type="linear", factor=2.0, partial_rotary_factor=0.5)),
     ("partial_rotary_factor", "0.5", "'linear'", "fails")),
    (dict(rope_scaling=dict(rope_type="ntk-by-parts", factor=2.0)), ("rope type", "'ntk-by-parts'")),
])
def test_llama_refusals_name_the_field(tmp_path, extra, words):
    _refused(tmp_path, dict(LLAMA, architectures=["LlamaModel"], **extra), *words)


# ---- CLIP and SigLIP -------------------------------------------------------------------------------------------

def _clip_parity(tmp_path, config, eos):
    from transformers import CLIPTextConfig, CLIPTextModel
    src = _save(CLIPTextModel(CLIPTextConfig(**config)), tmp_path / "src")
    ours = _convert(src, tmp_path, CLIPTextEncoder)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, eos - 1, (2, 11), generator=g)
    ids[0, 7], ids[1, 10] = eos, eos
    with torch.no_grad():
        out = load_reference("CLIPTextModel", src)(input_ids=ids)
        hidden, pooled = ours(ids)
    assert rel_l2(hidden, out.last_hidden_state) < TOL and rel_l2(pooled, out.pooler_output) < TOL
    return ours


def test_clip_of_diffusers_framepack_pipeline_test(tmp_path):
    """hidden_act gelu, 2-dim heads, legacy eos_token_id 2 (pooled at the highest id), projection_dim ignored."""
    ours = _clip_parity(tmp_path, DIFFUSERS_CLIP, eos=DIFFUSERS_CLIP["vocab_size"] - 1)
    assert ours.config.hidden_act == "gelu" and ours.config.eos_token_id == 2


@pytest.mark.parametrize("act", ["gelu_new", "gelu_pytorch_tanh", "relu", "silu"])
def test_clip_hidden_act(tmp_path, act):
    assert _clip_parity(tmp_path, dict(CLIP_TINY, hidden_act=act), eos=200).config.hidden_act == act


def test_clip_refusals_name_the_field(tmp_path):
    """CLIPTextConfig takes a list eos_token_id, but CLIPTextModel's pooling fails on it (even a list of one)."""
    from transformers import CLIPTextConfig, CLIPTextModel
    with pytest.raises(AttributeError):
        CLIPTextModel(CLIPTextConfig(**dict(CLIP_TINY, eos_token_id=[200])))(torch.tensor([[5, 200]]))
    base = dict(architectures=["CLIPTextModel"])
    _refused(tmp_path, dict(base, eos_token_id=[200]), "eos_token_id", "[200]")
    _refused(tmp_path, dict(base, hidden_act="prelu"), "hidden_act", "'prelu'")


@pytest.mark.parametrize("act, head", [("gelu", False), ("quick_gelu", True), ("relu", True)])
def test_siglip_hidden_act_and_head(tmp_path, act, head):
    from transformers import SiglipVisionConfig, SiglipVisionModel
    config = dict(SIGLIP_TINY, hidden_act=act, vision_use_head=head)
    src = _save(SiglipVisionModel(SiglipVisionConfig(**config)), tmp_path / "src")
    ours = _convert(src, tmp_path, SiglipVisionEncoder)
    pixels = torch.rand(2, 3, 30, 30, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = load_reference("SiglipVisionModel", src)(pixel_values=pixels).last_hidden_state
        assert rel_l2(ours(pixels), expected) < TOL
    assert ours.config.hidden_act == act


def test_siglip_refusal_names_the_field(tmp_path):
    _refused(tmp_path, dict(architectures=["SiglipVisionModel"], hidden_act="xielu"), "hidden_act", "'xielu'")


# ---- VAE and transformer (diffusers) -----------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["silu", "gelu", "mish", "relu"])
def test_vae_act_fn(tmp_path, act):
    """diffusers' pipeline-test VAE (silu) and the other activations its get_activation knows; the final
    norm's activation stays SiLU (diffusers' conv_act)."""
    from diffusers import AutoencoderKLHunyuanVideo
    src = _save(AutoencoderKLHunyuanVideo(**dict(DIFFUSERS_VAE, act_fn=act)), tmp_path / "src")
    ours = _convert(src, tmp_path, HunyuanVideoVAE)
    ref = AutoencoderKLHunyuanVideo.from_pretrained(src, torch_dtype=torch.float32).eval()
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    z = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel_l2(ours.encode(video).mean, ref.encode(video).latent_dist.mean) < TOL
        assert rel_l2(ours.decode(z), ref.decode(z).sample) < TOL
    assert ours.config.act_fn == act


def test_vae_refusal_names_the_field(tmp_path):
    _refused(tmp_path, dict(_class_name="AutoencoderKLHunyuanVideo", act_fn="tanh"), "act_fn", "'tanh'")


@pytest.mark.parametrize("variant", ["diffusers-test", "mlp_ratio-2", "token_replace"])
def test_transformer_configs(tmp_path, variant):
    """diffusers' pipeline-test transformer (head dim 10, rope axes (2, 4, 4)); mlp_ratio 2 (the token refiner keeps
    ratio 4, as diffusers builds it); image_condition_type, which diffusers' FramePack model does not use."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel
    extra = {"diffusers-test": {}, "mlp_ratio-2": dict(mlp_ratio=2.0),
             "token_replace": dict(image_condition_type="token_replace")}[variant]
    config = dict(DIFFUSERS_TRANSFORMER, **extra)
    torch.manual_seed(0)
    src = _save(HunyuanVideoFramepackTransformer3DModel(**config), tmp_path / "src")
    ours = _convert(src, tmp_path, FramePackTransformer)
    inputs = make_inputs(config, text_lens=[5, 3], height=4, width=6, seed=1)
    expected = reference_forward(load_transformer(src), inputs)
    with torch.no_grad():
        assert rel_l2(ours(**inputs), expected) < TOL


@pytest.mark.parametrize("extra, words", [
    (dict(qk_norm="layer_norm"), ("qk_norm", "'layer_norm'")),
    (dict(has_image_proj=False), ("has_image_proj", "False")),
])
def test_transformer_refusals_name_the_field(tmp_path, extra, words):
    config = dict(_class_name="HunyuanVideoFramepackTransformer3DModel", has_image_proj=True,
                  has_clean_x_embedder=True)
    _refused(tmp_path, dict(config, **extra), *words)
