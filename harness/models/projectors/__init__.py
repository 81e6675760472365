"""The trainable bridge: downsample encoder frames, project them into the LLM's embedding space.

Every projector maps ``(frames B, T, D_enc; lengths B)`` to ``(embeds B, T', D_llm; lengths' B)``
and knows its exact output length for any input length (``output_lengths``), so data code and
masks never guess. A projector is one class plus one registration line.

One module a projector: :mod:`~.base` (interface, registry), :mod:`~.downsampler`, :mod:`~.linear`,
:mod:`~.conv1d`, :mod:`~.qformer`.
"""
from harness.models.projectors.base import PROJECTORS, Projector
from harness.models.projectors.conv1d import Conv1dProjector
from harness.models.projectors.downsampler import Downsampler, lengths_mask
from harness.models.projectors.linear import LinearProjector
from harness.models.projectors.qformer import WindowQFormerProjector

__all__ = ["PROJECTORS", "Conv1dProjector", "Downsampler", "LinearProjector", "Projector", "WindowQFormerProjector", "lengths_mask"]
