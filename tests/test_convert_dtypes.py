"""weights_convert keeps every tensor's source dtype by default, bit for bit: fp32, fp16 and bf16 downloads, and
components that mix them, where a fused tensor (q, k, v -> qkv) takes the widest of its sources. --dtype casts.

The download is tests/reference/pipeline.py's (all five converters, sharded with index files, fp32 as saved);
other dtypes are copies of it with each shard's tensors recast.
"""
import collections
import json
import shutil

import pytest
import safetensors.torch
import torch

from framepack_native import FramePackPipeline
from framepack_native.models.loading import MANIFEST, read_manifest
from framepack_native.weights import open_checkpoint
from tests.reference.pipeline import build_pipeline
from weights_convert import ConversionError, convert
from weights_convert.__main__ import main
from weights_convert.core import build_plan, invert
from weights_convert.registry import converters

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
LABELS = {F32: "fp32", F16: "fp16", BF16: "bf16"}


@pytest.fixture(scope="module")
def download(reference_store):
    root = reference_store.get("pipeline_download", lambda p: build_pipeline(p, layout="download"))
    return {"src": root / "HunyuanVideo", "transformer": root / "FramePackI2V_HY",
            "image_encoder": root / "flux_redux_bfl"}


def sources(download):
    """{component: its folder in the download}."""
    return {"transformer": download["transformer"], "image_encoder": download["image_encoder"] / "image_encoder",
            **{n: download["src"] / n for n in ("text_encoder", "text_encoder_2", "vae")}}


def recast(download, root, dtype_of):
    """A copy of the download under `root` with tensor `key` of component `name` stored as dtype_of(name, key)."""
    shutil.copytree(download["src"].parent, root)
    copy = {k: root / v.relative_to(download["src"].parent) for k, v in download.items()}
    for name, folder in sources(copy).items():
        for shard in sorted(folder.glob("*.safetensors")):
            state = safetensors.torch.load_file(shard)
            state = {k: v.to(dtype_of(name, k)) if v.is_floating_point() else v for k, v in state.items()}
            safetensors.torch.save_file(state, shard, metadata={"format": "pt"})
    return copy


def cli(download, dst, *extra):
    return main([str(download["src"]), str(dst), "--transformer", str(download["transformer"]),
                 "--image-encoder", str(download["image_encoder"]), *extra])


def raw(folder):
    """Every tensor of a source folder as safetensors itself reads it."""
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in safetensors.torch.load_file(f).items()}


def bits(t):
    """The stored bytes of a tensor: equal bits, not just equal values (-0.0 differs from 0.0 here)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def widest(dtypes):
    """Independent of the converter: one dtype stays; any two of fp32 / fp16 / bf16 need fp32."""
    dtypes = set(dtypes)
    return dtypes.pop() if len(dtypes) == 1 else F32


def check_lossless(download, dst):
    """Every native tensor has the widest dtype of its sources; inverted, it gives back every source tensor exactly.
    Returns {component: [(source dtypes, native dtype) of each fused tensor]}."""
    manifest = json.loads((dst / MANIFEST).read_text())
    by_component = {c.component: c for c in converters()}
    fused = {}
    for name, folder in sources(download).items():
        src = raw(folder)
        ours = open_checkpoint(dst / name)
        native = {k: ours.get(k) for k in ours.keys()}  # as stored: get() without a dtype casts nothing
        cfg = json.loads((dst / name / "config.json").read_text())["config"]
        steps = build_plan(by_component[name].rules(cfg), {k: tuple(v.shape) for k, v in src.items()})
        fused[name] = []
        for step in steps:
            want = widest(src[k].dtype for k in step.srcs)
            assert native[step.dst].dtype == want, (name, step.dst)
            if len(step.srcs) > 1:
                fused[name].append(({src[k].dtype for k in step.srcs}, want))
        back = invert(steps, native)
        dropped = set(src) - set(back)  # only SigLIP's pooling head, which the native encoder does not have
        assert set(back) <= set(src) and all(k.startswith("head.") for k in dropped), (name, sorted(dropped)[:4])
        assert bool(dropped) == (name == "image_encoder"), name
        for key, t in back.items():
            assert same_bits(t, src[key].to(t.dtype)), (name, key)  # widening is exact ...
            assert same_bits(t.to(src[key].dtype), src[key]), (name, key)  # ... and narrows back to the source
        counts = collections.Counter(LABELS[t.dtype] for t in native.values())
        entry = manifest["components"][name]
        if len(counts) == 1:
            assert entry["dtype"] == next(iter(counts)) and "dtypes" not in entry, (name, entry)
        else:
            assert entry["dtype"] == "mixed" and entry["dtypes"] == dict(counts), (name, entry)
    return fused


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_default_conversion_is_bit_exact(download, tmp_path, dtype):
    if dtype != F32:
        download = recast(download, tmp_path / "download", lambda name, key: dtype)
    dst = tmp_path / "native"
    assert cli(download, dst) == 0  # no --dtype
    check_lossless(download, dst)
    manifest = read_manifest(dst)
    assert {e["dtype"] for e in manifest["components"].values()} == {LABELS[dtype]}
    for entry in manifest["components"].values():
        ckpt = open_checkpoint(dst / entry["path"])
        assert {ckpt.dtype(k) for k in ckpt.keys()} == {dtype}


# per component: one dtype for all, or a mix; in the Llama layers q, k, v chosen to cover every fusion case
QKV = {0: (F16, BF16, F16), 1: (BF16, BF16, BF16), 2: (F16, F32, F16)}  # -> fp32, bf16, fp32
CYCLE = (F16, BF16, F32)


def mixed_dtype(name, key):
    if name in ("vae", "image_encoder", "text_encoder_2"):
        return {"vae": F16, "image_encoder": BF16, "text_encoder_2": F32}[name]
    parts = key.split(".")
    if name == "text_encoder" and parts[0] == "layers" and parts[2] == "self_attn" and parts[3][0] in "qkv":
        return QKV[int(parts[1])]["qkv".index(parts[3][0])]
    return CYCLE[sum(key.encode()) % 3]  # deterministic, mixes neighbouring keys


@pytest.fixture(scope="module")
def mixed(download, tmp_path_factory):
    return recast(download, tmp_path_factory.mktemp("mixed") / "download", mixed_dtype)


def test_mixed_dtypes_are_kept_and_fused_ones_take_the_widest(mixed, tmp_path):
    dst = convert(mixed["src"], tmp_path / "native", transformer=mixed["transformer"],
                  image_encoder=mixed["image_encoder"])
    fused = check_lossless(mixed, dst)
    cases = {(frozenset(srcs), out) for component in fused.values() for srcs, out in component}
    assert (frozenset({F16, BF16}), F32) in cases  # neither half holds the other
    assert (frozenset({BF16}), BF16) in cases and (frozenset({F16, F32}), F32) in cases
    components = read_manifest(dst)["components"]
    assert {n: components[n]["dtype"] for n in ("vae", "image_encoder", "text_encoder_2")} == \
        {"vae": "fp16", "image_encoder": "bf16", "text_encoder_2": "fp32"}
    assert components["text_encoder"]["dtype"] == components["transformer"]["dtype"] == "mixed"
    pipe = FramePackPipeline.from_pretrained(dst, dtype=F32, device="cpu")  # loads, whatever is stored
    assert {p.dtype for p in pipe.transformer.parameters()} == {F32}


def test_dtype_option_casts(mixed, tmp_path):
    dst = tmp_path / "native"
    assert cli(mixed, dst, "--dtype", "bf16") == 0
    by_component = {c.component: c for c in converters()}
    for name, folder in sources(mixed).items():
        src, ours = raw(folder), open_checkpoint(dst / name)
        cfg = json.loads((dst / name / "config.json").read_text())["config"]
        steps = build_plan(by_component[name].rules(cfg), {k: tuple(v.shape) for k, v in src.items()})
        back = invert(steps, {k: ours.get(k) for k in ours.keys()})
        for key, t in back.items():
            assert same_bits(t, src[key].to(BF16)), (name, key)  # one rounding, from whatever was stored
    assert {e["dtype"] for e in read_manifest(dst)["components"].values()} == {"bf16"}


@pytest.mark.parametrize("dtype, stored", [("fp16", F16), (torch.float16, F16), (F32, F32), ("bf16", BF16)])
def test_python_dtype_casts_one_component(mixed, tmp_path, dtype, stored):
    src = sources(mixed)["text_encoder"]
    dst = convert(src, tmp_path / "native", dtype=dtype)
    ckpt = open_checkpoint(dst)
    assert {ckpt.dtype(k) for k in ckpt.keys()} == {stored}
    assert read_manifest(dst)["components"]["text_encoder"]["dtype"] == LABELS[stored]
    if stored == F32:  # widening everything is lossless too
        qkv = ckpt.get("layers.0.attn.qkv.weight")
        q = raw(src)["layers.0.self_attn.q_proj.weight"]
        assert same_bits(qkv[: q.shape[0]].to(q.dtype), q)


@pytest.mark.parametrize("dtype", ["int8", "float32", torch.int8, torch.float64, 16])
def test_unknown_dtype_refused_before_anything_is_written(download, tmp_path, dtype):
    with pytest.raises(ConversionError, match="dtype must be None"):
        convert(sources(download)["vae"], tmp_path / "out" / "native", dtype=dtype)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_an_unknown_dtype(download, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli(download, tmp_path / "native", "--dtype", "fp64")
    assert info.value.code == 2 and "--dtype" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fields", [{}, {"dtype": "bf16"}, {"dtype": "mixed", "dtypes": {"bf16": 3, "fp32": 1}}])
def test_manifest_dtype_fields_accepted(tmp_path, fields):
    """Absent (manifests written before the field), one dtype, or "mixed" with counts."""
    entry = {"class": "HunyuanVideoVAE", "path": "vae", "files": {"config.json": "0" * 64}, **fields}
    doc = {"format": "framepack_native", "format_version": 1, "components": {"vae": entry}, "aux": {},
           "sampling_type": None}
    (tmp_path / MANIFEST).write_text(json.dumps(doc))
    assert read_manifest(tmp_path)["components"]["vae"] == entry
