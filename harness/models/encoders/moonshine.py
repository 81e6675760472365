"""Moonshine's encoder: raw 16-kHz waveform in, frames from the model's own convolution stem (no mel spectrogram)."""
from __future__ import annotations

import torch
import torch.nn as nn

from harness.models.encoders.base import ENCODERS, SpeechEncoder, conv_out, lengths_mask


@ENCODERS.register("moonshine")
class MoonshineSpeechEncoder(SpeechEncoder):
    """Moonshine's encoder (from ``MoonshineModel``, ``MoonshineForConditionalGeneration`` or the bare
    ``MoonshineEncoder``; only the encoder is kept).

    The stem is conv1 (tanh) -> group norm -> conv2 (GELU) -> conv3 (GELU), then rotary transformer layers
    and a final layer norm. transformers' own forward does not make a padded batch equal to one-by-one
    encoding: its group norm takes its statistics over the padding too, and it subsamples the sample mask
    by striding instead of counting whole convolution windows. So we run the encoder's modules ourselves:
    the group norm's statistics come from each utterance's valid frames only, every utterance keeps exactly
    ``num_frames(n)`` frames (the convolution length formula, from the modules' own kernels and strides), and
    the layers mask the padding frames as keys. Without padding this is the encoder's own forward. Frames
    past an utterance's length are zeros.
    """

    def __init__(self, model: nn.Module, feature_extractor) -> None:
        super().__init__()
        self.encoder = model if hasattr(model, "conv1") else model.get_encoder()
        cfg = self.encoder.config
        self.dim = cfg.hidden_size
        self.normalize = bool(getattr(feature_extractor, "do_normalize", False))  # Moonshine: raw waveform
        self.sampling_rate = getattr(feature_extractor, "sampling_rate", 16000)

    @property
    def frame_rate(self) -> float:  # from the convolutions' own strides
        stride = 1
        for conv in self.convs:
            stride *= conv.stride[0]
        return self.sampling_rate / stride

    @property
    def convs(self) -> tuple[nn.Conv1d, nn.Conv1d, nn.Conv1d]:
        return self.encoder.conv1, self.encoder.conv2, self.encoder.conv3

    def _lengths(self, num_samples):
        n = num_samples
        for conv in self.convs:
            n = conv_out(n, conv)
        return n

    def num_frames(self, num_samples: int) -> int:
        return max(int(self._lengths(num_samples)), 0)

    def _group_norm(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``nn.GroupNorm`` of each utterance over its first ``lengths[b]`` frames only (``h``: B, C, T)."""
        gn = self.encoder.groupnorm
        B, C, T = h.shape
        mask = lengths_mask(lengths, T)[:, None, None, :].to(h.dtype)  # B, 1, 1, T
        x = h.reshape(B, gn.num_groups, C // gn.num_groups, T)
        count = (lengths.to(h.dtype) * (C // gn.num_groups))[:, None, None, None]
        mean = (x * mask).sum(dim=(2, 3), keepdim=True) / count
        var = (((x - mean) * mask) ** 2).sum(dim=(2, 3), keepdim=True) / count
        x = ((x - mean) / torch.sqrt(var + gn.eps)).reshape(B, C, T)
        if gn.affine:
            x = x * gn.weight[None, :, None] + gn.bias[None, :, None]
        return x

    def forward(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers.masking_utils import create_bidirectional_mask

        enc, dev = self.encoder, self.device
        dtype = enc.conv1.weight.dtype
        for w in waves:
            if self.num_frames(w.numel()) < 1:
                raise ValueError(
                    f"utterance of {w.numel()} samples is too short for Moonshine's convolutions "
                    "(no complete output frame: it needs at least num_frames(n) >= 1); skip it before encoding"
                )
        waves = [w.to(dev, torch.float32) for w in waves]
        if self.normalize:  # zero mean, unit variance per utterance (over its own samples only)
            waves = [(w - w.mean()) / torch.sqrt(w.var(unbiased=False) + 1e-7) for w in waves]
        n = torch.tensor([w.numel() for w in waves], device=dev)
        x = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)[:, None, :].to(dtype)  # B, 1, N

        # Frame t of a convolution only reads valid input iff t < conv_out(valid length): those frames are
        # exactly the utterance's own, so only the group norm needs the lengths.
        len1 = conv_out(n, enc.conv1)
        h = torch.tanh(enc.conv1(x))
        h = self._group_norm(h, len1)
        h = nn.functional.gelu(enc.conv2(h))
        h = nn.functional.gelu(enc.conv3(h))
        lengths = self._lengths(n).long()
        h = h.permute(0, 2, 1)  # B, T, D
        T = h.shape[1]

        valid = lengths_mask(lengths, T)
        mask = create_bidirectional_mask(config=enc.config, inputs_embeds=h, attention_mask=valid.long())
        position_ids = torch.arange(T, device=dev)[None, :]
        position_embeddings = enc.rotary_emb(h, position_ids=position_ids)
        for layer in enc.layers:
            h = layer(h, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings)
            h = h[0] if isinstance(h, tuple) else h
        h = enc.layer_norm(h)
        return h * valid[:, :, None].to(h.dtype), lengths
