"""Speech encoders: waveforms in, frames plus exact per-utterance frame counts out.

Every encoder takes a list of 1-D float waveforms at 16 kHz and returns ``(frames, lengths)``:
``frames`` is ``B, T, D`` (padded to the longest utterance) and ``lengths[b]`` is the number of
valid frames of utterance ``b``. Frame counts always come from the model's own configuration
(hop length, convolution kernels and strides), never from constants such as 320 or 1500.

An encoder family is one class plus one registration line, keyed by the Hugging Face
``model_type`` of its config, so ``hf:``, ``pack:`` and ``tiny:`` references all resolve here.

One module a family: :mod:`~.base` (the interface, the registry), :mod:`~.whisper`, :mod:`~.ssl`, :mod:`~.moonshine`.
"""
from harness.models.encoders.base import ENCODERS, SpeechEncoder
from harness.models.encoders.moonshine import MoonshineSpeechEncoder
from harness.models.encoders.ssl import HubertSpeechEncoder, SSLSpeechEncoder, Wav2Vec2SpeechEncoder, WavLMSpeechEncoder
from harness.models.encoders.whisper import WhisperSpeechEncoder

__all__ = ["ENCODERS", "HubertSpeechEncoder", "MoonshineSpeechEncoder", "SSLSpeechEncoder", "SpeechEncoder", "Wav2Vec2SpeechEncoder", "WavLMSpeechEncoder", "WhisperSpeechEncoder"]
