"""The SLAM-ASR paper's published numbers, as data.

Source: Z. Ma et al., "Speech Recognition Meets Large Language Model: Benchmarking, Models, and
Exploration" (AAAI 2025; arXiv 2402.08846). Every WER is in percent on LibriSpeech test-clean /
test-other, exactly as printed. Model references used by the studies (``hf:openai/whisper-large-v2``)
map to the paper's row and column names (``Whisper large``) so a table can print "paper" beside
"this study"::

    >>> from analysis import paper
    >>> paper.published_wer("hf:openai/whisper-large-v2", "hf:lmsys/vicuna-7b-v1.5")
    PaperWER(clean=2.58, other=6.47, source='Table 4')
    >>> paper.projector_params(d_enc=1280, d_llm=2048)  # Table 4, TinyLLaMA: 17.31M
    17305600

Only the checkpoints the paper names are mapped: an English-only ``whisper-tiny.en`` or an offline
``pack:`` model is a different model, and a paper number beside it would mislead.
"""
from __future__ import annotations

from dataclasses import dataclass

# Which test split each half of a published "clean / other" pair belongs to.
SPLITS = ("test-clean", "test-other")


@dataclass(frozen=True)
class PaperWER:
    """A published WER pair in percent, with the table it comes from."""

    clean: float
    other: float
    source: str

    def for_split(self, split: str) -> float | None:
        """WER (%) for a test split name, or None when the paper has no number for it."""
        return {"test-clean": self.clean, "test-other": self.other}.get(split)


def _w(text: str, source: str) -> PaperWER:
    """``"12.72 / 21.64"`` -> PaperWER (keeps the tables below as readable as the paper's)."""
    clean, other = (float(x) for x in text.split("/"))
    return PaperWER(clean, other, source)


# ----------------------------------------------------------------------------------------------
# Names: the paper's rows and columns, and the model references that are those checkpoints.

WHISPER = ("Whisper tiny", "Whisper base", "Whisper small", "Whisper medium", "Whisper large")
TABLE2_LLMS = ("TinyLLaMA", "LLaMA-2", "TinyLLaMA-Chat", "LLaMA-2-Chat")

ENCODER_NAMES: dict[str, str] = {
    "hf:openai/whisper-tiny": "Whisper tiny",
    "hf:openai/whisper-base": "Whisper base",
    "hf:openai/whisper-small": "Whisper small",
    "hf:openai/whisper-medium": "Whisper medium",
    "hf:openai/whisper-large-v2": "Whisper large",  # Table 4 names the v2 checkpoint
    "hf:facebook/hubert-base-ls960": "HuBERT Base",  # self-supervised on LS-960, not fine-tuned
    "hf:microsoft/wavlm-base": "WavLM Base",
    "hf:facebook/hubert-large-ll60k": "HuBERT Large",
    "hf:facebook/hubert-large-ls960-ft": "HuBERT Large + LibriSpeech-960 fine-tuning",
    "hf:microsoft/wavlm-large": "WavLM Large",
    "hf:facebook/hubert-xlarge-ls960-ft": "HuBERT X-Large + LibriSpeech-960 fine-tuning",
}
LLM_NAMES: dict[str, str] = {
    # The paper does not name its TinyLLaMA base checkpoint; both candidates map to it.
    "hf:TinyLlama/TinyLlama_v1.1": "TinyLLaMA",
    "hf:TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": "TinyLLaMA",
    "hf:meta-llama/Llama-2-7b-hf": "LLaMA-2",
    "hf:TinyLlama/TinyLlama-1.1B-Chat-v1.0": "TinyLLaMA-Chat",
    "hf:microsoft/phi-2": "Phi-2",
    "hf:meta-llama/Llama-2-7b-chat-hf": "LLaMA-2-Chat",
    "hf:lmsys/vicuna-7b-v1.5": "Vicuna-7B-v1.5",
}

# The configuration every published WER was measured with; a cell that departs from it gets no
# paper number beside it (a k=10 run is not a reproduction of a k=5 number).
RECIPE: dict[str, object] = {
    "adapter.projector": "linear",
    "adapter.k": 5,
    "adapter.hidden": 2048,
    "encoder.trainable": False,
    "llm.lora.enabled": False,
}


def _norm(ref: str) -> str:
    """Case-insensitive matching of references; a bare hub id counts as ``hf:``."""
    ref = ref.strip().rstrip("/")
    if ":" not in ref:
        ref = "hf:" + ref
    return ref.lower()


_ENC = {_norm(k): v for k, v in ENCODER_NAMES.items()}
_LLM = {_norm(k): v for k, v in LLM_NAMES.items()}


def encoder_name(reference: str) -> str | None:
    """The paper's name of an encoder reference (``hf:openai/whisper-base`` -> ``Whisper base``), else None."""
    if reference in ENCODER_NAMES.values():
        return reference
    return _ENC.get(_norm(reference))


def llm_name(reference: str) -> str | None:
    """The paper's name of an LLM reference (``hf:lmsys/vicuna-7b-v1.5`` -> ``Vicuna-7B-v1.5``), else None."""
    if reference in LLM_NAMES.values():
        return reference
    return _LLM.get(_norm(reference))


def display_name(reference: str) -> str:
    """A short readable label: the paper's name when there is one, else the model's own short name."""
    name = encoder_name(reference) or llm_name(reference)
    if name:
        return name
    return reference.split(":", 1)[-1].rstrip("/").split("/")[-1]


# ----------------------------------------------------------------------------------------------
# Table 2 - Whisper encoder size x LLM (base vs chat)

TABLE2: dict[tuple[str, str], PaperWER] = {
    (enc, llm): _w(cell, "Table 2")
    for enc, row in zip(WHISPER, [
        ("12.72 / 21.64", "16.16 / 25.17", "9.55 / 21.01", "8.97 / 18.77"),
        ("7.35 / 15.89", "17.46 / 21.84", "7.03 / 15.92", "6.37 / 12.98"),
        ("6.61 / 11.81", "6.41 / 10.88", "5.94 / 11.5", "4.51 / 8.94"),
        ("4.65 / 8.95", "3.35 / 6.10", "5.01 / 8.67", "2.71 / 6.37"),
        ("4.39 / 8.22", "3.01 / 7.15", "4.33 / 8.62", "2.72 / 6.79"),
    ])
    for llm, cell in zip(TABLE2_LLMS, row)
}

# ----------------------------------------------------------------------------------------------
# Table 3 - text perplexity vs WER, Whisper-large encoder


@dataclass(frozen=True)
class PerplexityRow:
    llm: str
    ppl_clean: float
    ppl_other: float
    wer: PaperWER


TABLE3: tuple[PerplexityRow, ...] = (
    PerplexityRow("LLaMA-2", 53.74, 58.78, _w("3.01 / 7.15", "Table 3")),
    PerplexityRow("LLaMA-2-Chat", 77.60, 85.74, _w("2.72 / 6.79", "Table 3")),
    PerplexityRow("Vicuna-7B-v1.5", 76.44, 84.95, _w("2.58 / 6.47", "Table 3")),  # printed as "Vicuna"
)

# ----------------------------------------------------------------------------------------------
# Tables 4 and 5 - one row per LLM (Whisper-large-v2 fixed) / per encoder (Vicuna-7B-v1.5 fixed)


@dataclass(frozen=True)
class ModelRow:
    name: str
    params: float | None  # the model's own parameters (None where the paper prints "-")
    hidden: int  # its output width (d_llm or d_enc)
    projector_params: float  # as printed (rounded to 10k)
    wer: PaperWER


TABLE4: tuple[ModelRow, ...] = tuple(
    ModelRow(name, params, hidden, proj, _w(wer, "Table 4"))
    for name, params, hidden, proj, wer in [
        ("TinyLLaMA", 1.10e9, 2048, 17.31e6, "4.39 / 8.22"),
        ("LLaMA-2", 6.74e9, 4096, 21.50e6, "3.01 / 7.15"),
        ("TinyLLaMA-Chat", 1.10e9, 2048, 17.31e6, "4.33 / 8.62"),
        ("Phi-2", 2.78e9, 2560, 18.35e6, "3.88 / 7.19"),
        ("LLaMA-2-Chat", 6.74e9, 4096, 21.50e6, "2.72 / 6.79"),
        ("Vicuna-7B-v1.5", 6.74e9, 4096, 21.50e6, "2.58 / 6.47"),
    ]
)

TABLE5: tuple[ModelRow, ...] = tuple(
    ModelRow(name, params, hidden, proj, _w(wer, "Table 5"))
    for name, params, hidden, proj, wer in [
        ("FBank", None, 80, 10.03e6, "68.95 / 99.37"),  # 100 Hz input: its size implies k = 10
        ("Whisper tiny", 7.63e6, 384, 12.33e6, "7.07 / 16.01"),
        ("Whisper base", 19.82e6, 512, 13.64e6, "5.07 / 13.07"),
        ("Whisper small", 87.00e6, 768, 16.26e6, "4.19 / 9.50"),
        ("Whisper medium", 305.68e6, 1024, 18.88e6, "2.72 / 6.79"),
        ("Whisper large", 634.86e6, 1280, 21.50e6, "2.58 / 6.47"),
        ("Whisper large + Qwen-Audio fine-tuning", 634.86e6, 1280, 21.50e6, "2.52 / 6.35"),
        ("HuBERT Base", 94.70e6, 768, 16.26e6, "4.43 / 10.72"),
        ("WavLM Base", 94.38e6, 768, 16.26e6, "4.14 / 9.66"),
        ("HuBERT Large", 316.61e6, 1024, 18.88e6, "4.53 / 8.74"),
        ("HuBERT Large + LibriSpeech-960 fine-tuning", 316.61e6, 1024, 18.88e6, "2.10 / 4.26"),
        ("WavLM Large", 315.45e6, 1024, 18.88e6, "2.13 / 4.73"),
        ("WavLM Large + LibriSpeech-960 fine-tuning", 315.45e6, 1024, 18.88e6, "1.96 / 4.18"),
    ]
)

# The best system is in the reference repository's README (HuBERT X-Large fine-tuned + Vicuna-7B);
# the tables round it to 1.8 / 3.4 and arXiv v1 printed 1.94 / 3.81.
BEST_SYSTEM = PaperWER(1.84, 3.39, "README (best system)")
BEST_SYSTEM_MODELS = ("HuBERT X-Large + LibriSpeech-960 fine-tuning", "Vicuna-7B-v1.5")

# Output widths of mapped models the tables do not print (the checkpoints' own configurations).
_EXTRA_WIDTHS = {"HuBERT X-Large + LibriSpeech-960 fine-tuning": 1280}

# ----------------------------------------------------------------------------------------------
# Tables 6, 8, 9 - comparisons with other systems (no study reproduces these; kept for reports)

TABLE6: dict[str, tuple[PaperWER, PaperWER | None]] = {
    system: (_w(wer, "Table 6"), _w(lm, "Table 6") if lm else None)
    for system, wer, lm in [
        ("ContextNet-L", "2.1 / 4.6", "1.9 / 4.1"),
        ("Conformer-L", "2.1 / 4.3", "1.9 / 3.9"),
        ("Branchformer-L", "2.4 / 5.5", "2.1 / 4.5"),
        ("Zipformer-L", "2.0 / 4.4", "1.9 / 3.9"),
        ("Whisper-large-v2", "2.7 / 5.2", None),
        ("OWSM-v3.1", "2.4 / 5.0", None),
        ("SLAM-ASR", "1.8 / 3.4", None),
    ]
}  # second entry: with an in-domain language model


@dataclass(frozen=True)
class SystemRow:
    system: str
    encoder: str
    llm: str
    projector: str
    data: str
    wer: PaperWER


TABLE8: tuple[SystemRow, ...] = (
    SystemRow("SALMONN", "Whisper + BEATs", "Vicuna-13B (LoRA)", "window Q-Former", "1,960 h",
              _w("2.1 / 4.9", "Table 8")),
    SystemRow("Qwen-Audio", "Whisper-large", "Qwen-7B", "MLP", "30,000+ h", _w("2.0 / 4.2", "Table 8")),
    SystemRow("SLAM-ASR", "HuBERT X-Large", "Vicuna-7B", "MLP", "960 h", _w("1.8 / 3.4", "Table 8")),
)

TABLE9: dict[str, PaperWER] = {
    setting: _w(wer, "Table 9")
    for setting, wer in [
        ("pre-trained encoder + LLM", "2.13 / 4.73"),
        ("CTC fine-tuned, no LM", "2.66 / 4.97"),
        ("CTC fine-tuned + in-domain LM", "2.14 / 4.00"),
        ("CTC fine-tuned + LLM", "1.96 / 4.18"),
    ]
}

# ----------------------------------------------------------------------------------------------
# Lookups


def projector_params(*, d_enc: int, d_llm: int, k: int = 5, hidden: int = 2048) -> int:
    """Parameters of the paper's projector: Linear(k*d_enc -> hidden) -> ReLU -> Linear(hidden -> d_llm)."""
    return k * d_enc * hidden + hidden + hidden * d_llm + d_llm


def table4_row(llm: str) -> ModelRow | None:
    """Table 4's row for an LLM reference or paper name."""
    name = llm_name(llm)
    return next((r for r in TABLE4 if r.name == name), None)


def table5_row(encoder: str) -> ModelRow | None:
    """Table 5's row for an encoder reference or paper name."""
    name = encoder_name(encoder)
    return next((r for r in TABLE5 if r.name == name), None)


def hidden_size(reference: str) -> int | None:
    """Output width of a mapped model as the paper prints it (d_enc for encoders, d_llm for LLMs)."""
    row = table5_row(reference) or table4_row(reference)
    if row is not None:
        return row.hidden
    return _EXTRA_WIDTHS.get(encoder_name(reference) or "")


def published_wer(encoder: str, llm: str) -> PaperWER | None:
    """The paper's WER for an encoder x LLM pair (references or paper names), or None.

    Tables are searched in order 2, 4, 5 and then the README's best system; where two tables
    print the same pair they agree (e.g. Whisper large + LLaMA-2: 3.01 / 7.15 in Tables 2 and 4).
    """
    enc, lm = encoder_name(encoder), llm_name(llm)
    if enc is None or lm is None:
        return None
    if (enc, lm) in TABLE2:
        return TABLE2[(enc, lm)]
    if enc == "Whisper large" and (row := table4_row(lm)):
        return row.wer
    if lm == "Vicuna-7B-v1.5" and (row := table5_row(enc)):
        return row.wer
    if (enc, lm) == BEST_SYSTEM_MODELS:
        return BEST_SYSTEM
    return None


def follows_recipe(config: dict[str, object]) -> bool:
    """Does a run's (flattened) config match the paper's recipe (k=5, linear 2048, frozen encoder, no LoRA)?

    Keys missing from ``config`` are taken to be at the recipe's value.
    """
    return all(config.get(key, value) == value for key, value in RECIPE.items())
