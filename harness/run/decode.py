"""Batched decoding of utterances and WER evaluation of a split."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from harness.config import DecodeConfig, RunConfig
from harness.run.distributed import Dist
from harness.data.audio import load_audio
from harness.data.manifest import Utterance
from harness.metrics import WERResult, word_errors
from harness.models.speech_llm import SpeechLLM

if TYPE_CHECKING:
    from harness.run.features import FeatureCache


def speech_frames(
    model: SpeechLLM, utts: Sequence[Utterance], features: "FeatureCache | None"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder frames ``B, T, D`` and lengths: from the feature cache when there is one."""
    if features is not None:
        return features.load(utts, device=model.prefix_ids.device)
    return model.encode([load_audio(u.audio) for u in utts])


def _token_cap(seconds: float, cfg: DecodeConfig) -> int:
    """Most tokens an utterance of ``seconds`` may generate: a per-utterance cap, so batching never
    changes a transcript. The seconds come from the encoder frames of the audio itself, not from
    the manifest's ``duration`` (which a wrong manifest would turn into a cap of a few tokens)."""
    if cfg.tokens_per_second is None:
        return cfg.max_new_tokens
    return min(cfg.max_new_tokens, int(math.ceil(seconds * cfg.tokens_per_second)) + 16)


def _decode_options(cfg: DecodeConfig) -> dict[str, Any]:
    """What :meth:`SpeechLLM.generate_frames` takes from the decode settings besides beam and caps."""
    return {"tokens_per_position": cfg.tokens_per_position, "ctc_weight": cfg.ctc_weight,
            "ctc_candidates": cfg.ctc_candidates}


def transcribe(
    model: SpeechLLM,
    utts: Sequence[Utterance],
    cfg: DecodeConfig,
    *,
    desc: str = "decode",
    progress: bool = True,
    features: "FeatureCache | None" = None,
    dist: Dist | None = None,
) -> list[str]:
    """Greedy or beam-search transcripts, in the order of ``utts``.

    Utterances are sorted by duration into batches (less padding, similar output lengths), then
    put back in order; the model's padding masks and position ids make the batch composition
    irrelevant to the result. Under several processes (``dist``) every rank decodes its slice of
    each batch, generation is kept in step across ranks, and every rank returns all transcripts.
    """
    dist = dist or Dist()
    order = sorted(range(len(utts)), key=lambda i: utts[i].duration)
    mine: dict[int, str] = {}
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(utts), desc=desc, unit="utt", disable=not progress, leave=False)
    try:
        for idx, real in dist.batches(order, cfg.batch_size):
            batch = [utts[i] for i in idx]
            frames, lengths = speech_frames(model, batch, features)
            caps = [_token_cap(float(n) / model.encoder.frame_rate, cfg) for n in lengths]
            out = model.generate_frames(frames, lengths, beam=cfg.beam, max_new_tokens=caps, synced=dist.enabled,
                                        **_decode_options(cfg))
            if real:
                mine.update(zip(idx, out))
            bar.update(len(idx) * dist.world)
    finally:
        bar.close()
        model.train(was_training)
    hyps = dist.merge(mine)
    return [hyps[i] for i in range(len(utts))]


@torch.no_grad()
def transcribe_audio(model: SpeechLLM, audio: Sequence[Any], cfg: RunConfig) -> list[str]:
    """Transcripts of audio files (any sample rate or channel count) or 16 kHz mono waveforms, decoded as
    the run decodes its test splits: the same caps, and, when the run read its frozen encoder's frames
    from the feature cache, those frames rounded to fp16 as the cache stores them, so a file of a test
    split gets exactly the run's own transcript."""
    rounded = cfg.encoder.cache and not cfg.encoder.trainable
    out: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for a in audio:
            frames, lengths = model.encode([a if isinstance(a, torch.Tensor) else load_audio(str(a))])
            if rounded:
                frames = frames.to(torch.float16).to(frames.dtype)
            caps = [_token_cap(float(n) / model.encoder.frame_rate, cfg.decode) for n in lengths]
            out += model.generate_frames(frames, lengths, beam=cfg.decode.beam, max_new_tokens=caps,
                                         **_decode_options(cfg.decode))
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def ctc_transcribe(
    model: SpeechLLM, utts: Sequence[Utterance], *, batch_size: int = 16, features: "FeatureCache | None" = None,
) -> list[str]:
    """The CTC head's greedy transcripts (no LLM), in the order of ``utts``: how far the projector's
    alignment to the LLM's tokens has got."""
    out: list[str] = []
    for i in range(0, len(utts), batch_size):
        frames, lengths = speech_frames(model, utts[i : i + batch_size], features)
        out.extend(model.ctc_transcribe(frames, lengths))
    return out


@dataclass
class SplitResult:
    name: str
    wer: WERResult
    rows: list[dict[str, Any]]  # per utterance: id, reference, hypothesis, errors, ref_words


def evaluate_split(
    model: SpeechLLM,
    name: str,
    utts: Sequence[Utterance],
    cfg: DecodeConfig,
    *,
    progress: bool = True,
    features: "FeatureCache | None" = None,
    dist: Dist | None = None,
) -> SplitResult:
    hyps = transcribe(model, utts, cfg, desc=f"decode {name}", progress=progress, features=features, dist=dist)
    refs = [u.text for u in utts]
    wer, per_utt = word_errors(refs, hyps, normaliser=cfg.normaliser)
    rows = [
        {"id": u.id, "reference": u.text, "hypothesis": h, "errors": s.errors, "ref_words": s.ref_words}
        for u, h, s in zip(utts, hyps, per_utt)
    ]
    return SplitResult(name, wer, rows)


@torch.no_grad()
def teacher_forced(
    model: SpeechLLM,
    utts: Sequence[Utterance],
    *,
    batch_size: int,
    features: "FeatureCache | None" = None,
    dist: Dist | None = None,
) -> dict[str, float]:
    """Loss and next-token accuracy over the transcript tokens of ``utts`` (token-weighted; under
    several processes each rank takes a slice of every batch and the sums are combined)."""
    dist = dist or Dist()
    was_training = model.training
    model.eval()
    loss_sum, correct, tokens = 0.0, 0, 0
    try:
        for idx, real in dist.batches(list(range(len(utts))), batch_size):
            batch = [utts[i] for i in idx]
            frames, lengths = speech_frames(model, batch, features)
            out = model.forward_frames(frames, lengths, [u.text for u in batch])
            if real:
                n = int(out["tokens"])
                loss_sum += float(out["loss"]) * n
                correct += int(out["correct"])
                tokens += n
    finally:
        model.train(was_training)
    loss_sum, correct, tokens = dist.sum(loss_sum), dist.sum(correct), dist.sum(tokens)
    return {"loss": loss_sum / max(tokens, 1), "acc": correct / max(tokens, 1)}
