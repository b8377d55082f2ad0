"""TeaCache (framepack_native.teacache) vs the official FramePack model's own (framepack==0.0.9,
HunyuanVideoTransformer3DModelPacked.initialize_teacache): the same steps skipped, the same outputs (float32)."""
import pytest
import torch

from framepack_native.models import FramePackTransformer
from framepack_native.models.transformer import FramePackTransformerConfig
from framepack_native.teacache import TeaCache
from tests.reference.common import perturb_, rel_l2
from tests.reference.official import official_forward, official_transformer_class
from tests.reference.transformer import TINY, make_inputs
from weights_convert import convert

TOL = 1e-4
STEPS = 8


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(the official model, ours converted from its saved weights), both float32 on the CPU."""
    folder = tmp_path_factory.mktemp("official_transformer")
    torch.manual_seed(0)
    official = official_transformer_class()(**TINY)
    perturb_(official, 0)
    official.save_pretrained(folder / "src")
    convert(folder / "src", folder / "native")
    ours = FramePackTransformer.from_pretrained(folder / "native", dtype=torch.float32, device="cpu")
    return official.float().eval(), ours


def sampling_calls(sections=2, seed=3):
    """The transformer inputs of `sections` sampling runs of STEPS steps: a latent drifting slowly from noise
    as sigma falls, the rest of a section's inputs fixed (as the pipeline calls it)."""
    calls = []
    for section in range(sections):
        base = make_inputs(TINY, text_lens=[5], seed=seed + section)
        drift = torch.randn(base["hidden_states"].shape, generator=torch.Generator().manual_seed(seed))
        for k in range(STEPS):
            sigma = 1.0 - k / STEPS
            calls.append({**base, "hidden_states": base["hidden_states"] * sigma + drift * (1 - sigma),
                          "timestep": torch.tensor([1000.0 * sigma])})
    return calls


@pytest.mark.parametrize("threshold", [0.15, 0.4])
@torch.no_grad()
def test_teacache_skips_as_the_official_model_does(models, threshold):
    official, ours = models
    official.initialize_teacache(enable_teacache=True, num_steps=STEPS, rel_l1_thresh=threshold)
    cache = TeaCache(STEPS, threshold)
    skipped_changed_output = False
    for inputs in sampling_calls():
        before = cache.skipped
        got = ours(**inputs, teacache=cache)
        assert rel_l2(got, official_forward(official, inputs)) < TOL
        # the same rescaled distance accumulated since the last computed step
        assert cache.accumulated == pytest.approx(official.accumulated_rel_l1_distance, rel=1e-5, abs=1e-9)
        if cache.skipped > before:
            skipped_changed_output |= rel_l2(got, ours(**inputs)) > 1e-3
    # both paths ran: some steps skipped (and that changed their output), the first and last of each run not
    assert 2 <= cache.skipped <= 2 * (STEPS - 2) - 2 and skipped_changed_output


@torch.no_grad()
def test_threshold_zero_computes_every_step(models):
    _, ours = models
    cache = TeaCache(STEPS, threshold=0.0)
    for inputs in sampling_calls(sections=1):
        assert torch.equal(ours(**inputs, teacache=cache), ours(**inputs))
    assert cache.skipped == 0


def test_bad_teacache_arguments():
    with pytest.raises(ValueError, match="num_steps >= 1 and threshold >= 0"):
        TeaCache(0)
    with pytest.raises(ValueError, match="num_steps >= 1 and threshold >= 0"):
        TeaCache(5, float("nan"))
    with pytest.raises(ValueError, match="threshold is a number .* got True"):
        TeaCache(5, True)  # the official API's enable_teacache=True, misplaced
    cache = TeaCache(5)
    cache.compute(torch.ones(1, 4, 8))
    with pytest.raises(ValueError, match=r"saw inputs \(1, 4, 8\), now \(2, 4, 8\): make one per sampling run"):
        cache.compute(torch.ones(2, 4, 8))
    with torch.device("meta"):
        no_dual = FramePackTransformer(FramePackTransformerConfig.tiny(num_layers=0))
    no_dual.to_empty(device="cpu")
    with pytest.raises(ValueError, match="TeaCache tests the first dual-stream block"):
        no_dual(**make_inputs({**TINY, "num_layers": 0}, text_lens=[3]), teacache=TeaCache(4))
