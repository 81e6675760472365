"""Self-supervised encoders (HuBERT, WavLM, wav2vec 2.0): raw waveform in, frames from the model's own convolutions."""
from __future__ import annotations

import torch
import torch.nn as nn

from harness.models.encoders.base import ENCODERS, SpeechEncoder, lengths_mask


class SSLSpeechEncoder(SpeechEncoder):
    """HuBERT / WavLM / wav2vec 2.0 (also their CTC fine-tuned checkpoints: the hidden states
    before the CTC head). Raw 16 kHz waveform, normalised as the checkpoint's feature extractor says;
    frame counts from the model's own convolution kernels and strides."""

    def __init__(self, model: nn.Module, feature_extractor) -> None:
        super().__init__()
        # A *ForCTC checkpoint loaded through AutoModel is already the bare model; keep only it.
        self.model = getattr(model, model.base_model_prefix, model) if hasattr(model, "lm_head") else model
        cfg = self.model.config
        self.dim = cfg.hidden_size
        self.normalize = bool(getattr(feature_extractor, "do_normalize", True))
        # Group-norm checkpoints (e.g. HuBERT/wav2vec2 base) were trained without an attention mask:
        # their feature extractor says so, and we follow it.
        self.use_mask = bool(getattr(feature_extractor, "return_attention_mask", False))
        stride = 1
        for s in cfg.conv_stride:
            stride *= s
        self.frame_rate = feature_extractor.sampling_rate / stride

    def num_frames(self, num_samples: int) -> int:
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(num_samples)))

    def forward(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        waves = [w.to(dev, torch.float32) for w in waves]
        if self.normalize:  # zero mean, unit variance per utterance (over its own samples only)
            waves = [(w - w.mean()) / torch.sqrt(w.var(unbiased=False) + 1e-7) for w in waves]
        n = torch.tensor([w.numel() for w in waves], device=dev)
        x = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)  # B, N
        attn = lengths_mask(n, x.shape[1]).long() if self.use_mask else None
        out = self.model(x.to(next(self.model.parameters()).dtype), attention_mask=attn)
        lengths = self.model._get_feat_extract_output_lengths(n).long()
        return out.last_hidden_state, lengths


@ENCODERS.register("hubert")
class HubertSpeechEncoder(SSLSpeechEncoder):
    pass


@ENCODERS.register("wavlm")
class WavLMSpeechEncoder(SSLSpeechEncoder):
    pass


@ENCODERS.register("wav2vec2")
class Wav2Vec2SpeechEncoder(SSLSpeechEncoder):
    pass
