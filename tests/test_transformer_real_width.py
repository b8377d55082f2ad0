"""FramePackTransformer vs diffusers at the real widths of FramePackI2V_HY (24 heads x 128, text 4096, pooled 768,
image 1152, rope (16, 56, 56), 16 channels, 2 refiner layers) with 1 dual + 1 single block: float32, rel. L2 < 1e-4.

~0.9 B parameters (3.6 GB in float32). To stay near one model's memory and within the time budget, the saved
reference is converted in memory with the same CONVERTER rules (the folder path, convert -> from_pretrained, is
covered by the tiny tests), our model shares the reference's tensors where the layout is unchanged, and the
sequence is tiny (batch 2, 4x6 latents, 3 image tokens).
"""
import gc
import json

import torch

from framepack_native.models import FramePackTransformer
from framepack_native.models.loading import config_from_dict
from tests.reference.common import rel_l2
from tests.reference.transformer import REAL_WIDTH, builder, load, make_inputs, reference_forward
from weights_convert.core import convert_state
from weights_convert.transformer import CONVERTER


def test_real_width_parity(scratch):
    src = scratch / "transformer_real_width"
    src.mkdir()
    builder(REAL_WIDTH, seed=1)(src)
    inputs = make_inputs(REAL_WIDTH, text_lens=[6, 3], frames=2, height=4, width=6, padding=2, image_tokens=3, seed=11)
    ref = load(src)
    expected = reference_forward(ref, inputs)
    state = ref.state_dict()
    del ref
    fields, native = convert_state(CONVERTER, state, json.loads((src / "config.json").read_text()))
    del state
    gc.collect()
    with torch.device("meta"):
        ours = FramePackTransformer(config_from_dict(FramePackTransformer.config_class, fields))
    ours.load_state_dict(native, strict=True, assign=True)
    del native
    assert ours.config.hidden_dim == 3072 and ours.config.rope_axes_dim == (16, 56, 56)
    with torch.no_grad():
        got = ours.eval()(**inputs)
    del ours
    gc.collect()
    assert rel_l2(got, expected) < 1e-4
