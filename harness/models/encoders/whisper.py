"""Whisper's encoder (the paper's default family): log-mel computed in torch, ``native`` or ``pad30`` input."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.config import EncoderConfig
from harness.models.encoders.base import ENCODERS, SpeechEncoder, conv_out, lengths_mask


@ENCODERS.register("whisper")
class WhisperSpeechEncoder(SpeechEncoder):
    """Whisper's encoder (from ``WhisperModel`` or ``WhisperForConditionalGeneration``).

    ``pad30``: log-mel padded to 30 s as in the paper; all ``max_source_positions`` frames are kept
    (this is what makes the reference recipe feed 300 LLM tokens per utterance at k = 5).
    ``native``: log-mel of the utterance's own length; the first T positional embeddings are used,
    and in a padded batch every layer masks padding frames, so a batch gives each utterance the same
    frames as encoding it alone. transformers' ``WhisperEncoder.forward`` insists on 30-s input, so we
    run its modules (conv stack, positions, layers, final norm) ourselves; on 30-s input this is
    identical to its forward.
    """

    def __init__(self, encoder: nn.Module, feature_extractor, *, input_mode: str = "native") -> None:
        super().__init__()
        if input_mode not in ("native", "pad30"):
            raise ValueError(f"input_mode must be 'native' or 'pad30', got {input_mode!r}")
        self.encoder = encoder
        self.input_mode = input_mode
        self.dim = encoder.config.d_model
        fe = feature_extractor
        self.n_fft, self.hop = fe.n_fft, fe.hop_length
        self.pad_samples = fe.n_samples  # 30 s at 16 kHz for real Whisper
        self.register_buffer("mel_filters", torch.as_tensor(fe.mel_filters, dtype=torch.float32).T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        self.frame_rate = fe.sampling_rate / (self.hop * stride)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """``N`` samples -> ``n_mels, N // hop`` log-mel, exactly as Whisper's feature extractor."""
        stft = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True)
        power = stft[..., :-1].abs() ** 2  # Whisper drops the last STFT frame
        log_spec = torch.clamp(self.mel_filters @ power, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0

    def _mel_frames(self, num_samples: int) -> int:
        n = self.pad_samples if self.input_mode == "pad30" else num_samples
        return n // self.hop

    @classmethod
    def from_model(cls, model: nn.Module, feature_extractor, options: EncoderConfig) -> "WhisperSpeechEncoder":
        """``model``: Whisper's encoder, or a whole Whisper model (its encoder is kept).
        ``encoder.whisper.*`` are Whisper's own options."""
        encoder = model if hasattr(model, "conv1") else model.get_encoder()
        return cls(encoder, feature_extractor, input_mode=options.whisper.input_mode)

    @property
    def cache_key(self) -> str:
        return self.input_mode

    def num_frames(self, num_samples: int) -> int:
        if self.input_mode == "pad30":
            return self.encoder.config.max_source_positions
        return int(conv_out(conv_out(self._mel_frames(num_samples), self.encoder.conv1), self.encoder.conv2))

    def forward(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        enc, dev = self.encoder, self.mel_filters.device
        max_pos = enc.config.max_source_positions
        for w in waves:
            if self.num_frames(w.numel()) > max_pos or w.numel() > self.pad_samples:
                raise ValueError(
                    f"utterance of {w.numel() / 16000:.1f} s is longer than Whisper's 30-s window; "
                    "skip or split it before encoding (data.max_duration)"
                )
        if self.input_mode == "pad30":
            waves = [F.pad(w, (0, self.pad_samples - w.numel())) for w in waves]
        mels = [self.log_mel(w.to(dev, torch.float32)) for w in waves]  # each: n_mels, T_mel
        mel_len = torch.tensor([m.shape[-1] for m in mels], device=dev)
        x = torch.nn.utils.rnn.pad_sequence([m.T for m in mels], batch_first=True).transpose(1, 2)  # B, n_mels, T_mel
        x = x.to(enc.conv1.weight.dtype)

        # Conv stack. Zero the padding between the convolutions so that a padded batch matches
        # one-by-one encoding (conv padding is zeros; padding frames must look the same).
        h = F.gelu(enc.conv1(x))  # B, D, T_mel
        len1 = conv_out(mel_len, enc.conv1)
        h = h * lengths_mask(len1, h.shape[-1])[:, None, :]
        h = F.gelu(enc.conv2(h))  # B, D, T
        lengths = conv_out(len1, enc.conv2)
        h = h.transpose(1, 2)  # B, T, D
        T = h.shape[1]
        h = h + enc.embed_positions.weight[:T]  # first T positional embeddings
        h = F.dropout(h, p=enc.dropout, training=self.training)

        mask = None
        if self.input_mode == "native" and bool((lengths < T).any()):
            valid = lengths_mask(lengths, T)  # B, T
            # Additive mask on keys: B, 1, T(query), T(key).
            mask = torch.zeros(valid.shape, dtype=h.dtype, device=h.device).masked_fill(~valid, torch.finfo(h.dtype).min)
            mask = mask[:, None, None, :].expand(-1, 1, T, -1)
        for layer in enc.layers:
            h = layer(h, mask)
            h = h[0] if isinstance(h, tuple) else h
        h = enc.layer_norm(h)
        if self.input_mode == "pad30":
            lengths = torch.full_like(lengths, T)
        return h, lengths
