"""Speech encoders on real LibriSpeech audio: frames, exact per-utterance lengths, padding invariance,
Whisper's 30-s path equal to transformers' own forward, frame counts taken from the model config."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor, WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from tests.conftest import audio, tiny_config
from harness.models import build_encoder
from harness.models.encoders import HubertSpeechEncoder, WhisperSpeechEncoder

# transformers' WavLM attention passes a bool padding mask with a float position bias to torch.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

SSL = ["tiny:hubert", "tiny:wavlm", "tiny:wav2vec2"]


def _encoder(name: str, *overrides: str):
    return build_encoder(tiny_config(f"encoder.name={name}", *overrides)).eval()


@pytest.fixture(scope="module")
def whisper_waves(utts_by_duration) -> list[torch.Tensor]:
    """Five real utterances of different lengths, 2.1 s to 16.0 s, in a shuffled order."""
    picks = [utts_by_duration[i] for i in (5, 0, len(utts_by_duration) - 1, 9, 2)]
    return [audio(u) for u in picks]


@pytest.fixture(scope="module")
def ssl_waves(utts_by_duration) -> list[torch.Tensor]:
    """Real audio at lengths that hit every rounding case of the conv stack (SSL attention is quadratic
    in 800 frames/s of the tiny models, so the clips are short): two whole utterances, three cut."""
    short = [audio(u) for u in utts_by_duration[:2]]
    return [short[1][:16000], short[0], short[1][:16019], short[1][:8421]]


def _check_lengths(enc, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        frames, lengths = enc(waves)
    expected = [enc.num_frames(w.numel()) for w in waves]
    assert lengths.tolist() == expected
    assert frames.shape == (len(waves), max(expected), enc.dim)
    assert torch.isfinite(frames).all()
    return frames, lengths


# ------------------------------------------------------------------------------- Whisper


def test_whisper_native_lengths_follow_the_conv_formula(whisper_waves) -> None:
    enc = _encoder("tiny:whisper")
    frames, lengths = _check_lengths(enc, whisper_waves)
    hop = enc.hop
    assert hop == 160 and enc.frame_rate == 50.0
    assert lengths.tolist() == [(w.numel() // hop - 1) // 2 + 1 for w in whisper_waves]
    # 50 frames per second of audio, to within a frame.
    for w, n in zip(whisper_waves, lengths.tolist()):
        assert abs(n - w.numel() / 16000 * 50) <= 1


def test_whisper_pad30_gives_every_utterance_all_positions(whisper_waves) -> None:
    enc = _encoder("tiny:whisper", "encoder.whisper.input_mode=pad30")
    frames, lengths = _check_lengths(enc, whisper_waves[:3])
    max_pos = enc.encoder.config.max_source_positions
    assert max_pos == 1500
    assert lengths.tolist() == [max_pos] * 3 and frames.shape[1] == max_pos
    assert all(enc.num_frames(n) == max_pos for n in (1, 16000, 480000))


def test_whisper_native_batch_equals_one_by_one(whisper_waves) -> None:
    enc = _encoder("tiny:whisper")
    with torch.no_grad():
        frames, lengths = enc(whisper_waves)
        for b, w in enumerate(whisper_waves):
            alone, n = enc([w])
            assert n.tolist() == [int(lengths[b])]
            assert torch.allclose(frames[b, : lengths[b]], alone[0], atol=1e-5), b


def test_whisper_pad30_equals_transformers_forward(whisper_waves) -> None:
    """On 30-s input our module-by-module path is transformers' ``WhisperEncoder.forward``."""
    enc = _encoder("tiny:whisper", "encoder.whisper.input_mode=pad30")
    waves = whisper_waves[:2]
    fe = WhisperFeatureExtractor(feature_size=80)
    feats = fe([w.numpy() for w in waves], sampling_rate=16000, return_tensors="pt").input_features
    assert feats.shape == (2, 80, 3000)
    with torch.no_grad():
        ours, _ = enc(waves)
        theirs = enc.encoder(feats).last_hidden_state
        mel = enc.log_mel(F.pad(waves[0], (0, fe.n_samples - waves[0].numel())))
    assert torch.allclose(mel, feats[0], atol=1e-5)  # our log-mel is the feature extractor's
    assert ours.shape == theirs.shape == (2, 1500, 32)
    assert (ours - theirs).abs().max() < 1e-5


def test_whisper_native_is_not_pad30(whisper_waves) -> None:
    """The two input modes are different computations (the 30-s window changes the log-mel's
    dynamic-range clamp and what attention sees), so a mix-up would show."""
    w = whisper_waves[1]
    with torch.no_grad():
        native, n = _encoder("tiny:whisper")([w])
        padded, _ = _encoder("tiny:whisper", "encoder.whisper.input_mode=pad30")([w])
    assert not torch.allclose(native[0], padded[0, : int(n[0])], atol=1e-3)


def test_whisper_rejects_more_than_its_window(whisper_waves) -> None:
    long = torch.cat([whisper_waves[2], whisper_waves[2]])  # 32 s of real speech
    for mode in ("native", "pad30"):
        with pytest.raises(ValueError, match="longer than Whisper's 30-s window"):
            _encoder("tiny:whisper", f"encoder.whisper.input_mode={mode}")([long])


def test_whisper_frame_counts_come_from_the_model_config(whisper_waves) -> None:
    """A Whisper with a 10-s window (500 positions) and a 320-sample hop: nothing assumes 30 s/1500/160."""
    cfg = WhisperConfig(
        d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=80,
        max_source_positions=500,
    )
    fe = WhisperFeatureExtractor(feature_size=80, chunk_length=20, hop_length=320)
    assert fe.n_samples == 320000 and fe.nb_max_frames == 1000
    waves = [w for w in whisper_waves if w.numel() < 160000][:3]
    torch.manual_seed(0)
    model = WhisperEncoder(cfg).eval()
    native = WhisperSpeechEncoder(model, fe, input_mode="native")
    _, lengths = _check_lengths(native, waves)
    assert lengths.tolist() == [(w.numel() // 320 - 1) // 2 + 1 for w in waves]
    assert native.frame_rate == 25.0
    pad = WhisperSpeechEncoder(model, fe, input_mode="pad30")
    _, lengths = _check_lengths(pad, waves)
    assert lengths.tolist() == [500] * len(waves)


# ------------------------------------------------------------------------------- SSL encoders


@pytest.mark.parametrize("name", SSL)
def test_ssl_lengths_are_exact(name: str, ssl_waves) -> None:
    enc = _encoder(name)
    _, lengths = _check_lengths(enc, ssl_waves)
    # The tiny models' conv stack: kernels (10, 3, 3), strides (5, 2, 2).
    expected = []
    for w in ssl_waves:
        n = w.numel()
        for k, s in ((10, 5), (3, 2), (3, 2)):
            n = (n - k) // s + 1
        expected.append(n)
    assert lengths.tolist() == expected
    assert enc.frame_rate == 16000 / 20


@pytest.mark.parametrize("name", ["tiny:wavlm", "tiny:wav2vec2"])
def test_ssl_with_attention_mask_batch_equals_one_by_one(name: str, ssl_waves) -> None:
    """Layer-norm SSL models take an attention mask: padding then changes nothing."""
    enc = _encoder(name)
    assert enc.use_mask
    waves = ssl_waves[1:]
    with torch.no_grad():
        frames, lengths = enc(waves)
        for b, w in enumerate(waves):
            alone, _ = enc([w])
            assert torch.allclose(frames[b, : lengths[b]], alone[0], atol=1e-4), b


def test_ssl_frame_counts_come_from_the_model_config(ssl_waves) -> None:
    """Strides (4, 3, 2, 2) = 48 samples per frame: a hard-coded 320 (or 20) would be caught."""
    kernels, strides = (7, 4, 3, 2), (4, 3, 2, 2)
    cfg = HubertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(16, 16, 16, 16), conv_kernel=kernels, conv_stride=strides,
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
    )
    torch.manual_seed(0)
    enc = HubertSpeechEncoder(HubertModel(cfg).eval(), Wav2Vec2FeatureExtractor()).eval()
    assert enc.frame_rate == 16000 / 48 and enc.dim == 16
    _, lengths = _check_lengths(enc, ssl_waves)
    for w, got in zip(ssl_waves, lengths.tolist()):
        n = w.numel()
        for k, s in zip(kernels, strides):
            n = (n - k) // s + 1
        assert got == n


def test_ssl_feature_normalisation_uses_each_utterance_alone(ssl_waves) -> None:
    """Scaling a waveform changes nothing after zero-mean/unit-variance normalisation."""
    enc = _encoder("tiny:wav2vec2")
    w = ssl_waves[1]
    with torch.no_grad():
        a, _ = enc([w])
        b, _ = enc([w * 7.0 + 0.01])
    assert torch.allclose(a, b, atol=1e-4)
