"""slam-harness: an ablation-study harness for LLM-based speech recognition (the SLAM-ASR recipe)."""

__version__ = "0.1.0"
