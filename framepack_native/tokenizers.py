"""Tokenizers of the two text encoders, on the `tokenizers` library, from a downloaded pipeline's files.

LlamaTokenizer: tokenizer/ (tokenizer.json + tokenizer_config.json + special_tokens_map.json), or a lone
tokenizer.model (Llama-3's tiktoken ranks, or a SentencePiece model). CLIPTokenizer: tokenizer_2/
(vocab.json + merges.txt + configs). Both give what transformers' tokenizers give for
`tok(texts, max_length=M, padding="max_length", truncation=True)`.
"""
import base64
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from framepack_native.configs import check_field, read_json
from framepack_native.models.loading import check_manifest_files
from framepack_native.weights import CheckpointError

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Llama-3's pre-tokenizer split (the `pat_str` of Meta's tiktoken tokenizer).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_NUM_RESERVED = 256
CLIP_SPLIT = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


TOKEN_FLAGS = ("single_word", "lstrip", "rstrip", "normalized")
# tokenizer_config.json fields read here, when not null: their JSON kinds
CONFIG_KINDS = {"padding_side": str, "truncation_side": str, "add_bos_token": bool, "add_eos_token": bool,
                "model_max_length": float, "added_tokens_decoder": dict}


def _token(value, where=None, field=None):
    """An AddedToken from a config entry: a string or transformers' serialized {"content": ...} dict."""
    if isinstance(value, dict):
        check_field(where, f"{field}.content", value.get("content"), str)
        for flag in TOKEN_FLAGS:
            if flag in value:
                check_field(where, f"{field}.{flag}", value[flag], bool)
        flags = {k: value[k] for k in TOKEN_FLAGS if k in value}
        return AddedToken(value["content"], special=True, **{"normalized": False, **flags})
    check_field(where, field, value, str)
    return AddedToken(value, special=True, normalized=False)


def _check_config(config, path):
    """Check the tokenizer_config.json fields this module reads (kinds, padding sides, added token ids)."""
    for key, kind in CONFIG_KINDS.items():
        if config.get(key) is not None:
            check_field(path, key, config[key], kind)
    for key in ("padding_side", "truncation_side"):
        if config.get(key) not in (None, "left", "right"):
            raise CheckpointError(f"{path}: field {key!r} must be 'left' or 'right', got {config[key]!r}")
    for token_id, entry in (config.get("added_tokens_decoder") or {}).items():
        if not token_id.isdigit():
            raise CheckpointError(f"{path}: field 'added_tokens_decoder' has a key {token_id!r} that is not a token id")
        check_field(path, f"added_tokens_decoder.{token_id}", entry, dict)
        _token(entry, path, f"added_tokens_decoder.{token_id}")


def read_special_tokens(folder):
    """{key: AddedToken} from special_tokens_map.json, overridden by tokenizer_config.json; plus the config."""
    folder = Path(folder)
    config_path, map_path = folder / "tokenizer_config.json", folder / "special_tokens_map.json"
    config = read_json(config_path) if config_path.is_file() else {}
    _check_config(config, config_path)
    special = {}
    for path, doc in ((map_path, read_json(map_path) if map_path.is_file() else {}), (config_path, config)):
        special.update({k: _token(doc[k], path, k) for k in SPECIAL_KEYS if doc.get(k)})
    return special, config


def _add_missing(tokenizer, tokens):
    """Register special tokens as added tokens (new ones get the next ids), as transformers does at load."""
    for tok in tokens:
        tokenizer.add_special_tokens([tok])


def _texts(texts):
    """A list of strings from one string or a list of them."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"texts must be strings, got {[type(t).__name__ for t in texts]}")
    return texts


def _batch(tokenizer, texts, max_length, pad_id, pad_token, padding_side, truncation_side):
    """Encode with truncation to max_length (special tokens kept) and padding to max_length.

    Returns input_ids (B, max_length) int64 and attention_mask (B, max_length) int64, 1 = token.
    """
    texts = _texts(texts)
    if not isinstance(max_length, int) or max_length < tokenizer.num_special_tokens_to_add(False) + 1:
        raise ValueError(f"max_length must be an int of at least "
                         f"{tokenizer.num_special_tokens_to_add(False) + 1}, got {max_length!r}")
    tokenizer.enable_truncation(max_length, stride=0, strategy="longest_first", direction=truncation_side)
    tokenizer.enable_padding(direction=padding_side, pad_id=pad_id, pad_type_id=0, pad_token=pad_token,
                             length=max_length)
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=True)
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long).reshape(len(texts), max_length)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long).reshape(len(texts), max_length)
    return ids, mask


class LlamaTokenizer:
    """Llama-3 byte-level BPE (transformers' PreTrainedTokenizerFast on the same files)."""

    def __init__(self, tokenizer, special, padding_side="right", truncation_side="right", model_max_length=None):
        if "pad_token" not in special:
            raise ValueError("the Llama tokenizer has no pad_token (tokenizer_config.json / special_tokens_map.json);"
                             " padding to max_length needs one")
        self.tokenizer = tokenizer   # a tokenizers.Tokenizer or a SentencePieceBackend
        self.special = {k: t.content for k, t in special.items()}
        self.pad_token = self.special["pad_token"]
        self.pad_token_id = tokenizer.token_to_id(self.pad_token)
        if self.pad_token_id is None:
            raise ValueError(f"pad_token {self.pad_token!r} is not in the vocabulary")
        self.padding_side, self.truncation_side = padding_side, truncation_side
        self.model_max_length = model_max_length

    @classmethod
    def from_pretrained(cls, folder):
        """Load from a pipeline's tokenizer/ folder: tokenizer.json, else tokenizer.model. In a converted folder
        the files are then checked against manifest.json; a damaged file is a CheckpointError naming it."""
        tokenizer = cls._read(Path(folder))
        check_manifest_files(folder)
        return tokenizer

    @classmethod
    def _read(cls, folder):
        special, config = read_special_tokens(folder)
        if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
            raise CheckpointError(f"{folder}: no tokenizer.json or tokenizer.model")
        if "pad_token" not in special:
            raise CheckpointError(f"{folder}: the Llama tokenizer has no pad_token (tokenizer_config.json / "
                                  "special_tokens_map.json); padding to max_length needs one")
        sides = config.get("padding_side", "right"), config.get("truncation_side", "right")
        add_bos, add_eos = config.get("add_bos_token"), config.get("add_eos_token")
        if (folder / "tokenizer.json").is_file():
            try:
                tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as e:  # the Rust loader raises its own exception type
                raise CheckpointError(f"{folder / 'tokenizer.json'}: not a valid tokenizers file "
                                      f"({' '.join(str(e).split())})") from None
            # tokenizer.json's post-processor decides BOS/EOS: transformers 5 drops the config flags then.
            add_bos = add_eos = None
        else:
            raw = (folder / "tokenizer.model").read_bytes()
            first = raw.split(b"\n", 1)[0].split(b" ")
            if not (len(first) == 2 and first[1].isdigit()):
                backend = SentencePieceBackend(folder / "tokenizer.model", add_bos=add_bos is not False,
                                               add_eos=bool(add_eos))
                if backend.token_to_id(special["pad_token"].content) is None:
                    raise CheckpointError(f"{folder}: pad_token {special['pad_token'].content!r} is not in the "
                                          "vocabulary of tokenizer.model")
                return cls(backend, special, *sides, config.get("model_max_length"))
            tokenizer = _from_tiktoken(raw, folder / "tokenizer.model")
        for entry_id, entry in sorted((config.get("added_tokens_decoder") or {}).items(), key=lambda x: int(x[0])):
            if tokenizer.token_to_id(entry["content"]) is None:
                _add_missing(tokenizer, [_token(entry)])
                if tokenizer.token_to_id(entry["content"]) != int(entry_id):
                    raise CheckpointError(f"{folder / 'tokenizer_config.json'}: added token {entry['content']!r} "
                                          f"should have id {entry_id}, the vocabulary gives it "
                                          f"{tokenizer.token_to_id(entry['content'])}")
        _add_missing(tokenizer, special.values())
        if add_bos is not None or add_eos is not None or tokenizer.post_processor is None:
            try:
                tokenizer.post_processor = _bos_eos_template(tokenizer, special, bool(add_bos), bool(add_eos))
            except ValueError as e:
                raise CheckpointError(f"{folder / 'tokenizer_config.json'}: {e}") from None
        return cls(tokenizer, special, *sides, config.get("model_max_length"))

    def __call__(self, texts, max_length):
        """texts: str or list of B str -> input_ids (B, max_length) int64, attention_mask (B, max_length) int64."""
        if isinstance(self.tokenizer, SentencePieceBackend):
            return self.tokenizer.batch(_texts(texts), max_length, self.pad_token_id, self.padding_side,
                                        self.truncation_side)
        return _batch(self.tokenizer, texts, max_length, self.pad_token_id, self.pad_token, self.padding_side,
                      self.truncation_side)

    def encode(self, text):
        """Token ids of one text with the special tokens the post-processor adds, no padding or truncation."""
        if isinstance(self.tokenizer, SentencePieceBackend):
            return self.tokenizer.encode(text)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        return self.tokenizer.encode(text).ids


def _bos_eos_template(tokenizer, special, add_bos, add_eos):
    """The post-processor transformers builds from add_bos_token / add_eos_token: [bos] $A [eos] ([bos] $B [eos])."""
    ends = []
    for flag, key in ((add_bos, "bos_token"), (add_eos, "eos_token")):
        if flag and key not in special:
            raise ValueError(f"add_{key} is set but the tokenizer config has no {key}")
        ends.append(special[key].content if flag else None)
    bos, eos = ends

    def seq(name, type_id):
        return [f"{t}:{type_id}" for t in (bos, f"${name}", eos) if t]

    tokens = [(t, tokenizer.token_to_id(t)) for t in dict.fromkeys(e for e in ends if e)]
    return processors.TemplateProcessing(single=" ".join(seq("A", 0)), pair=" ".join(seq("A", 0) + seq("B", 1)),
                                         special_tokens=tokens)


def _bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _from_tiktoken(raw, path):
    """Llama-3's tokenizer.model (base64 token, rank per line) as byte-level BPE + its 256 special tokens.

    Merges are recovered from the ranks: every split of a token into two ranked pieces is a merge of the
    token's rank (transformers' TikTokenConverter); with ignore_merges whole-word tokens match directly.
    """
    ranks, tokens = {}, {}
    for n, line in enumerate(raw.splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            token, rank = base64.b64decode(token, validate=True), int(rank)
        except ValueError:  # binascii.Error too
            raise CheckpointError(f"{path}: line {n} is not '<base64 token> <rank>'") from None
        if rank in tokens:
            raise CheckpointError(f"{path}: line {n}: rank {rank} given twice")
        if token in ranks:
            raise CheckpointError(f"{path}: line {n}: its token is already ranked {ranks[token]}")
        ranks[token], tokens[rank] = rank, token
    if ranks and (min(tokens) != 0 or max(tokens) != len(tokens) - 1):
        wrong = max(tokens) if max(tokens) != len(tokens) - 1 else min(tokens)
        raise CheckpointError(f"{path}: ranks must be 0 .. {len(tokens) - 1}, got {wrong}")
    byte_char = _bytes_to_unicode()

    def encode(b):
        return "".join(byte_char[x] for x in b)

    vocab, merges = {}, []
    for token, rank in ranks.items():
        vocab[encode(token)] = rank
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, ranks[a], ranks[b], a, b) for a, b in splits]
    merges = [(encode(a), encode(b)) for *_, a, b in sorted(merges)]
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    n = len(ranks)
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
             "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
             "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    names += [f"<|reserved_special_token_{i}|>" for i in range(5, LLAMA3_NUM_RESERVED - 5)]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in names])
    if tokenizer.token_to_id("<|eot_id|>") != n + 9:
        raise CheckpointError(f"{path}: unexpected vocabulary size {n} for a Llama-3 tiktoken model")
    return tokenizer


class SentencePieceBackend:
    """A SentencePiece tokenizer.model (Llama-1/2 style), run by the sentencepiece library itself.

    Special-token strings inside the text are not split out (sentencepiece reads them as plain text);
    the BOS / EOS ids come from the model and the add_bos_token (default true) / add_eos_token flags.
    """

    def __init__(self, path, add_bos=True, add_eos=False):
        import sentencepiece
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except Exception as e:  # sentencepiece's own exception types for a file it cannot parse
            raise CheckpointError(f"{path}: neither Llama-3 tiktoken ranks nor a SentencePiece model "
                                  f"({' '.join(str(e).split())})") from None
        self.prefix = [self.sp.bos_id()] if add_bos and self.sp.bos_id() >= 0 else []
        self.suffix = [self.sp.eos_id()] if add_eos and self.sp.eos_id() >= 0 else []

    def token_to_id(self, token):
        i = self.sp.piece_to_id(token)
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i

    def encode(self, text):
        return self.prefix + self.sp.encode(text) + self.suffix

    def batch(self, texts, max_length, pad_id, padding_side, truncation_side):
        """As _batch: (B, max_length) ids and mask, content truncated so that BOS/EOS survive."""
        keep = max_length - len(self.prefix) - len(self.suffix)
        if keep < 1:
            raise ValueError(f"max_length {max_length} leaves no room for text")
        rows, masks = [], []
        for text in texts:
            ids = self.sp.encode(text)
            ids = ids[:keep] if truncation_side == "right" else ids[len(ids) - min(keep, len(ids)):]
            ids = self.prefix + ids + self.suffix
            pad = [pad_id] * (max_length - len(ids))
            mask = [1] * len(ids)
            rows.append(ids + pad if padding_side == "right" else pad + ids)
            masks.append(mask + [0] * len(pad) if padding_side == "right" else [0] * len(pad) + mask)
        return torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.long)


class CLIPTokenizer:
    """OpenAI CLIP's BPE (transformers' CLIPTokenizer): NFC, whitespace collapsed, lower case, `</w>` word ends,
    <|startoftext|> ... <|endoftext|>, 77 tokens."""

    def __init__(self, vocab, merges, special, model_max_length=77, padding_side="right", truncation_side="right"):
        defaults = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                    "pad_token": "<|endoftext|>"}
        special = {**{k: _token(v) for k, v in defaults.items()}, **special}
        tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                  end_of_word_suffix="</w>", fuse_unk=False, unk_token=special["unk_token"].content))
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        tokenizer.decoder = decoders.ByteLevel()
        _add_missing(tokenizer, special.values())
        bos, eos = special["bos_token"].content, special["eos_token"].content
        tokenizer.post_processor = processors.RobertaProcessing(
            (eos, tokenizer.token_to_id(eos)), (bos, tokenizer.token_to_id(bos)),
            trim_offsets=False, add_prefix_space=False)
        self.tokenizer = tokenizer
        self.special = {k: t.content for k, t in special.items()}
        self.pad_token = self.special["pad_token"]
        self.pad_token_id = tokenizer.token_to_id(self.pad_token)
        self.model_max_length = model_max_length
        self.padding_side, self.truncation_side = padding_side, truncation_side

    @classmethod
    def from_pretrained(cls, folder):
        """Load from a pipeline's tokenizer_2/ folder: vocab.json + merges.txt (else tokenizer.json's BPE). In a
        converted folder the files are then checked against manifest.json; a damaged one is a CheckpointError."""
        tokenizer = cls._read(Path(folder))
        check_manifest_files(folder)
        return tokenizer

    @classmethod
    def _read(cls, folder):
        special, config = read_special_tokens(folder)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
            vocab = read_json(vocab_file)
            try:
                lines = merges_file.read_bytes().decode("utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise CheckpointError(f"{merges_file}: not UTF-8 text ({e})") from None
            if lines and lines[0].startswith("#version"):
                lines = lines[1:]
            merges = [tuple(line.split(" ")) for line in lines if line]
        elif (folder / "tokenizer.json").is_file():
            vocab_file = merges_file = folder / "tokenizer.json"
            model = read_json(vocab_file).get("model", {})
            check_field(vocab_file, "model", model, dict)
            vocab = model.get("vocab")
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) if isinstance(m, list) else (m,)
                      for m in model.get("merges") or []]
        else:
            raise CheckpointError(f"{folder}: no vocab.json + merges.txt or tokenizer.json")
        bad = [m for m in merges if len(m) != 2 or not all(isinstance(p, str) for p in m)]
        if bad:
            raise CheckpointError(f"{folder}: malformed CLIP vocabulary (merge {bad[0]!r}: not a pair of strings)")
        if not isinstance(vocab, dict) or not all(type(i) is int for i in vocab.values()):
            raise CheckpointError(f"{folder}: malformed CLIP vocabulary (it must map tokens to integer ids)")
        # what the BPE model would refuse with a bare Exception: a merge of, or into, a token not in the vocabulary
        unknown = next(((a, b, t) for a, b in merges for t in (a, b, a + b) if t not in vocab), None)
        if unknown:
            fits = f"does not fit {vocab_file}" if merges_file != vocab_file else "its merges do not fit its vocabulary"
            raise CheckpointError(f"{merges_file}: {fits} (merge {unknown[0]!r} {unknown[1]!r}: {unknown[2]!r} is not "
                                  "in the vocabulary)")
        max_length = config.get("model_max_length") or 77
        return cls(vocab, merges, special, max_length if max_length <= 1_000_000 else 77,
                   config.get("padding_side", "right"), config.get("truncation_side", "right"))

    def __call__(self, texts, max_length=None):
        """texts: str or list of B str -> input_ids (B, L) int64, attention_mask (B, L); L = max_length or 77."""
        return _batch(self.tokenizer, texts, max_length or self.model_max_length, self.pad_token_id,
                      self.pad_token, self.padding_side, self.truncation_side)
