"""The one error of synthesis."""


class SynthesisError(Exception):
    """A TTS engine is missing or failed; the message says which voice and what to install."""
