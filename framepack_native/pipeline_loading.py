"""FramePackPipeline.from_pretrained: every component of a converted folder, headers checked first, each loaded in its
preset dtype (the transformer optionally in fp8 with LoRAs merged first), then the process group picked up."""
from pathlib import Path

from framepack_native.image import SiglipProcessorConfig
from framepack_native.models import (CLIPTextEncoder, FramePackTransformer, HunyuanVideoVAE, LlamaTextEncoder,
                                     SiglipVisionEncoder)
from framepack_native.models.loading import check_manifest_files, read_manifest
from framepack_native.presets import get_preset, resolve_dtypes
from framepack_native.prompt import HIDDEN_STATE_INDEX
from framepack_native.sampling import FlowMatchConfig
from framepack_native.tokenizers import CLIPTokenizer, LlamaTokenizer
from framepack_native.weights import CheckpointError, open_checkpoint


def load_pipeline(cls, native_dir, dtype, device, offload, preset, quantize, loras, parallel):
    """FramePackPipeline.from_pretrained's work (its docstring has the arguments)."""
    dtypes, fp32_output = resolve_dtypes(dtype, device, get_preset(preset))
    quantized = quantize if isinstance(quantize, dict) else {"transformer": quantize}
    if set(quantized) - {"transformer", "text_encoder"}:
        raise ValueError(f"quantize applies to the transformer and the text_encoder, got {sorted(quantized)}")
    root = Path(native_dir)
    manifest = read_manifest(root)
    need = ("transformer", "vae", "text_encoder", "text_encoder_2", "image_encoder")
    missing = [n for n in need if n not in manifest["components"]]
    missing += [n for n in ("tokenizer", "tokenizer_2", "scheduler", "feature_extractor")
                if n not in manifest["aux"]]
    if missing:
        raise CheckpointError(f"{root}: incomplete model folder, missing {', '.join(missing)} (convert the "
                              "pipeline with --transformer and --image-encoder)")
    load_device = "cpu" if offload else device
    folders = {name: root / entry["path"] for section in ("components", "aux")
               for name, entry in manifest[section].items()}

    # The small files and every weight file's header first: a damaged or truncated one fails in a second,
    # not after minutes of loading the other components.
    for name in need:
        open_checkpoint(folders[name])
    small = dict(tokenizer=LlamaTokenizer.from_pretrained(folders["tokenizer"]),
                 tokenizer_2=CLIPTokenizer.from_pretrained(folders["tokenizer_2"]),
                 image_processor=SiglipProcessorConfig.from_pretrained(folders["feature_extractor"]),
                 scheduler=FlowMatchConfig.from_file(folders["scheduler"] / "scheduler_config.json"))
    for name in ("scheduler", "feature_extractor"):  # after they parse: a malformed one keeps its own message
        check_manifest_files(folders[name])  # (the tokenizers check their own files)

    def load(cls_, name):
        return cls_.from_pretrained(folders[name], dtype=dtypes[name], device=load_device)

    # the app's high_quality_fp32_output_for_inference: the output Linear in float32, before any LoRA merges into it
    transformer = FramePackTransformer.from_pretrained(
        folders["transformer"], dtype=dtypes["transformer"], device=load_device, quantize=quantized.get("transformer"),
        loras=loras, fp32_modules=("final_layer.linear",) if fp32_output else ())
    pipe = cls(
        transformer=transformer, vae=load(HunyuanVideoVAE, "vae"),
        text_encoder=LlamaTextEncoder.from_pretrained(
            folders["text_encoder"], dtype=dtypes["text_encoder"], device=load_device,
            quantize=quantized.get("text_encoder")).drop_layers_after(HIDDEN_STATE_INDEX),
        text_encoder_2=load(CLIPTextEncoder, "text_encoder_2"),
        image_encoder=load(SiglipVisionEncoder, "image_encoder"), **small,
        sampling_type=manifest.get("sampling_type") or "inverted_anti_drifting", device=device, offload=offload)
    import torch.distributed as dist
    several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if parallel is True or parallel not in (None, False) or (parallel is None and several):
        pipe.enable_parallel(None if parallel in (None, True) else parallel)
    return pipe
