"""Proving a converted pack works end to end: encoder packs transcribe real speech, LLM packs answer a prompt."""
from __future__ import annotations

from pathlib import Path

import torch

from harness.packs.registry import PACKS
from harness.packs.store import pack_path


def default_librispeech_dir() -> Path:
    """The shared LibriSpeech sample, ../shared/data/librispeech-mini relative to the repo root."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "librispeech-mini"


def librispeech_utterances(root: Path) -> list[tuple[Path, str]]:
    """(flac path, transcript) for every utterance under root, in a stable order."""
    utts = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            if line.strip():
                utt_id, text = line.split(" ", 1)
                utts.append((trans.parent / f"{utt_id}.flac", text))
    return utts


def transcribe(folder: Path, paths: list[Path], *, batch_size: int = 8) -> list[str]:
    """Greedy transcripts of 16 kHz audio files with a converted Whisper folder's own decoder."""
    import soundfile as sf
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(folder)
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    texts: list[str] = []
    for i in range(0, len(paths), batch_size):
        audio = []
        for p in paths[i:i + batch_size]:
            samples, rate = sf.read(p, dtype="float32")
            if rate != 16000:
                raise ValueError(f"{p}: expected 16 kHz audio, got {rate} Hz")
            audio.append(samples)
        features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            ids = model.generate(features, do_sample=False, num_beams=1)
        texts += processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [t.strip() for t in texts]


def generate_text(folder: Path, prompt: str, *, chat: bool, max_new_tokens: int = 32) -> str:
    """Greedy continuation of `prompt` (wrapped in the chat template when `chat`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if chat:
        messages = [{"role": "user", "content": prompt}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tok(text, return_tensors="pt", add_special_tokens=False)
    else:
        inputs = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


_LLM_PROMPTS = {  # (prompt, use chat template)
    "smollm2-135m-instruct": ("What is the capital of France?", True),
    "gemma3-270m": ("Once upon a time,", False),
    "qwen2.5-coder-0.5b-instruct": ("What is the capital of France?", True),
    "qwen2.5-coder-1.5b-instruct": ("What is the capital of France?", True),
}


def verify(name: str, *, limit: int | None = None, data_dir: Path | None = None, verbose: bool = False) -> float | str:
    """Prove a pack's conversion end to end (converting it first if needed).

    Encoder packs (with Whisper's decoder, or the pack's own ``transcribe``): greedy-transcribe the LibriSpeech utterances under data_dir (default: the shared
    librispeech-mini, at most `limit` of them) and return the WER (a fraction, after LibriSpeech-style
    normalisation). LLM packs: return a short greedy answer to a fixed prompt. `verbose` prints
    every reference/hypothesis pair (or the prompt).
    """
    import jiwer

    from harness.metrics import normalize_librispeech  # uppercase, no punctuation but apostrophes

    spec = PACKS.get(name)
    folder = pack_path(name)
    if spec.kind == "llm":
        prompt, chat = _LLM_PROMPTS[name]
        text = generate_text(folder, prompt, chat=chat)
        if verbose:
            print(f"{name}: {prompt!r} -> {text!r}")
        return text
    utts = librispeech_utterances(Path(data_dir) if data_dir is not None else default_librispeech_dir())
    if not utts:
        raise FileNotFoundError(f"no LibriSpeech utterances found under {data_dir or default_librispeech_dir()}")
    utts = utts[:limit] if limit is not None else utts
    hyps = (spec.transcribe or transcribe)(folder, [p for p, _ in utts])
    refs = [normalize_librispeech(t) for _, t in utts]
    hyps_norm = [normalize_librispeech(h) for h in hyps]
    wer = jiwer.wer(refs, hyps_norm)
    if verbose:
        for (path, _), ref, hyp in zip(utts, refs, hyps_norm):
            mark = " " if ref == hyp else "*"
            print(f"{mark} {path.stem}\n    REF {ref}\n    HYP {hyp}")
        print(f"{name}: WER {100 * wer:.2f}% over {len(utts)} utterances")
    return wer
