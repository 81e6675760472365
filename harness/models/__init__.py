"""Model building: a :class:`~harness.config.RunConfig` -> a ready :class:`SpeechLLM`.

- :mod:`~harness.models.encoders`: speech encoders, one module a family (Whisper, SSL), one registry.
- :mod:`~harness.models.projectors`: the downsampler and the projectors, one module each, one registry.
- :mod:`~harness.models.speech_llm`: encoder -> projector -> LLM with the prompt, the forward and generation.
- :mod:`~harness.models.ctc`: the optional CTC head on the projector's outputs (a departure from the paper).
- :mod:`~harness.models.sources`: ``hf:``, ``pack:`` and ``tiny:`` model references and their loaders.
- :mod:`~harness.models.build`: all of it from a config; :mod:`~harness.models.fast`: CPU fast paths.
"""
from harness.models.build import build_encoder, build_model, validate_references
from harness.models.encoders import ENCODERS, SpeechEncoder
from harness.models.projectors import PROJECTORS, Downsampler, Projector
from harness.models.sources import ModelLoadError, Reference, check_reference
from harness.models.speech_llm import IGNORE, Prompt, SpeechLLM

__all__ = [
    "PROJECTORS", "ENCODERS", "IGNORE", "Downsampler", "ModelLoadError", "Projector", "Prompt", "Reference",
    "SpeechEncoder", "SpeechLLM", "build_encoder", "build_model", "check_reference", "validate_references",
]
