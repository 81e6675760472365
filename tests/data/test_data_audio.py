"""load_audio / audio_duration on real files: LibriSpeech FLAC and WAVs written here with soundfile."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from harness.data.audio import SAMPLE_RATE, AudioError, audio_duration, load_audio, save_audio

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FLAC = SHARED / "librispeech-mini" / "LibriSpeech" / "dev-clean" / "1272" / "128104" / "1272-128104-0000.flac"


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def test_load_real_flac():
    info = sf.info(str(FLAC))
    wav = load_audio(FLAC)
    assert wav.dtype.is_floating_point and str(wav.dtype) == "torch.float32"
    assert wav.ndim == 1 and len(wav) == info.frames
    assert info.samplerate == SAMPLE_RATE
    assert float(wav.abs().max()) <= 1.0 and float(wav.std()) > 0.01
    assert audio_duration(FLAC) == pytest.approx(info.frames / SAMPLE_RATE)
    # same samples as a plain soundfile read: no gain or offset is applied
    ref, _ = sf.read(str(FLAC), dtype="float32")
    np.testing.assert_array_equal(wav.numpy(), ref)


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_resampling_keeps_length_and_frequency(tmp_path, rate):
    seconds = 1.5
    path = tmp_path / f"sine_{rate}.wav"
    sf.write(str(path), sine(1000, rate, seconds), rate, subtype="PCM_16")
    wav = load_audio(path).numpy()
    assert abs(len(wav) - round(seconds * SAMPLE_RATE)) <= 1
    assert dominant_frequency(wav, SAMPLE_RATE) == pytest.approx(1000, abs=2)
    assert audio_duration(path) == pytest.approx(seconds, abs=1 / rate)


def test_resampling_is_band_limited(tmp_path):
    # A 10 kHz tone is above the 8 kHz Nyquist limit of 16 kHz audio: a proper resampler
    # removes it, a naive one (dropping/interpolating samples) folds it down to 6 kHz.
    path = tmp_path / "tone_10k.wav"
    sf.write(str(path), sine(10_000, 44100, 1.0), 44100, subtype="FLOAT")
    wav = load_audio(path).numpy()
    middle = wav[1000:-1000]  # ignore the filter's edge transients
    assert np.sqrt(np.mean(middle**2)) < 0.01  # input RMS is ~0.35


def test_stereo_is_averaged(tmp_path):
    left = sine(440, SAMPLE_RATE, 0.5)
    right = np.full_like(left, 0.25)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    wav = load_audio(path).numpy()
    np.testing.assert_allclose(wav, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("subtype,atol", [("PCM_24", 1e-6), ("FLOAT", 0.0), ("PCM_16", 1 / 32768)])
def test_sample_formats(tmp_path, subtype, atol):
    x = sine(300, SAMPLE_RATE, 0.3)
    path = tmp_path / f"x_{subtype}.wav"
    sf.write(str(path), x, SAMPLE_RATE, subtype=subtype)
    np.testing.assert_allclose(load_audio(path).numpy(), x, atol=atol)


def test_garbage_file_names_path(tmp_path):
    path = tmp_path / "garbage.flac"
    path.write_bytes(b"this is not audio" * 20)
    with pytest.raises(AudioError, match="garbage.flac"):
        load_audio(path)
    with pytest.raises(AudioError, match="garbage.flac"):
        audio_duration(path)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_truncated_file_is_rejected(tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    sf.write(str(whole), sine(500, SAMPLE_RATE, 2.0), SAMPLE_RATE, subtype="PCM_16")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(AudioError, match=f"cut{suffix}"):
        load_audio(cut)


def test_truncated_real_flac(tmp_path):
    cut = tmp_path / "1272-128104-0000.flac"
    cut.write_bytes(FLAC.read_bytes()[:20_000])
    with pytest.raises(AudioError, match=str(cut)):
        load_audio(cut)


def test_zero_length(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")
    with pytest.raises(AudioError, match="empty.wav.*zero-length"):
        load_audio(path)
    with pytest.raises(AudioError, match="zero-length"):
        audio_duration(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    x = sine(300, SAMPLE_RATE, 0.2)
    x[100] = bad
    path = tmp_path / "nonfinite.wav"
    sf.write(str(path), x, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="nonfinite.wav.*NaN"):
        load_audio(path)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(tmp_path / "nope.wav")


def test_save_audio_roundtrip(tmp_path):
    x = sine(700, SAMPLE_RATE, 0.4)
    path = tmp_path / "out.flac"
    save_audio(path, x)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (SAMPLE_RATE, 1, "PCM_16", "FLAC")
    np.testing.assert_allclose(load_audio(path).numpy(), x, atol=1 / 32768)
    assert [p.name for p in tmp_path.iterdir()] == ["out.flac"]  # no temporary file left behind
