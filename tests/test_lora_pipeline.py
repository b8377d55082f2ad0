"""A LoRA end to end: diffusers' HunyuanVideoFramepackPipeline.load_lora_weights + set_adapters vs
FramePackPipeline.load_lora on its conversion (tests/test_pipeline.py's random pipeline and harness), float32 CPU,
frames within 5e-3 (max abs)."""
import torch

from framepack_native import FramePackPipeline
from tests.reference import lora as ref_lora
from tests.reference.pipeline import load_pipeline
from tests.test_pipeline import H, W, converted, picture  # noqa: F401 (converted: the fixture)


def test_pipeline_lora_matches_diffusers(converted, tmp_path):  # noqa: F811
    src, dst = converted
    ref_pipe = load_pipeline(src)
    ours = FramePackPipeline.from_pretrained(dst, dtype=torch.float32, device="cpu")
    shapes = ref_lora.module_shapes(dict(ref_pipe.transformer.config))
    path = ref_lora.save(tmp_path / "pytorch_lora_weights.safetensors",
                         ref_lora.random_peft(shapes, seed=21, magnitude=0.3))
    common = dict(height=H, width=W, num_frames=9, latent_window_size=2, num_inference_steps=2, guidance_scale=6.0,
                  sampling_type="vanilla")
    prompt, image = "a red fox runs through snow", picture(1)

    def run_ours():
        return ours(image, prompt, preset="diffusers", generator=torch.Generator().manual_seed(42), **common)

    without = run_ours()
    ref_pipe.load_lora_weights(str(path), adapter_name="style")
    ref_pipe.set_adapters(["style"], [0.8])
    ref = ref_pipe(image=image, prompt=prompt, generator=torch.Generator().manual_seed(42), output_type="pt",
                   **common).frames
    ours.load_lora(path, 0.8)
    got = run_ours()
    assert got.shape == ref.shape
    assert (without - ref).abs().max() > 0.05, "the LoRA barely changes the video: the test would be blind"
    err = (got - ref).abs().max().item()
    assert err < 5e-3, f"max abs error {err:.2e}"
    ours.unload_lora()
    assert torch.equal(run_ours(), without)
