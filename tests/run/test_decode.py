"""Decoding: a batch decodes exactly as one-by-one (greedy and beam), token limits, split evaluation."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tests.conftest import audio, tiny_config
from harness.config import DecodeConfig
from harness.data.manifest import Utterance
from harness.run.decode import _token_cap, evaluate_split, teacher_forced, transcribe
from harness.metrics import word_errors
from harness.models import build_model

MAX_NEW = 40


@pytest.fixture(scope="module")
def utts(utts_by_duration) -> list[Utterance]:
    """Five real utterances of different lengths (2.1 s to 4.9 s), not in duration order."""
    return [utts_by_duration[i] for i in (6, 0, 3, 1, 8)]


@pytest.fixture(scope="module")
def trained(utts):
    """A tiny model whose projector trained 30 steps on the utterances: its transcripts are
    utterance-dependent text, not an empty string or one repeated token."""
    model = build_model(tiny_config())
    waves, texts = [audio(u) for u in utts], [u.text for u in utts]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    with torch.no_grad():
        frames, lengths = model.encode(waves)
    for _ in range(30):
        opt.zero_grad()
        model.forward_frames(frames, lengths, texts)["loss"].backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def greedy_alone(trained, utts) -> list[str]:
    return [trained.generate([audio(u)], max_new_tokens=MAX_NEW)[0] for u in utts]


def test_transcripts_are_not_trivial(greedy_alone) -> None:
    assert len(set(greedy_alone)) == len(greedy_alone)  # one per utterance
    assert all(len(h) >= 10 for h in greedy_alone)


def test_batched_greedy_equals_one_by_one(trained, utts, greedy_alone) -> None:
    batch = trained.generate([audio(u) for u in utts], max_new_tokens=MAX_NEW)
    assert batch == greedy_alone


def test_shared_prefix_greedy_equals_whole_rows(trained, utts, greedy_alone) -> None:
    """Decoding with the prompt prefix computed once per batch writes what whole rows write."""
    assert trained.shares_prefix
    trained.share_prefix = False
    try:
        assert trained.generate([audio(u) for u in utts], max_new_tokens=MAX_NEW) == greedy_alone
    finally:
        trained.share_prefix = True


def test_row_dropping_greedy_equals_transformers_generate(trained, utts) -> None:
    """Our greedy loop (rows leave the batch when they end) writes what transformers' own greedy
    ``generate`` writes for the same padded batch, row by row, each cut at its own cap."""
    caps = [MAX_NEW, 3, MAX_NEW, 12, 7]
    with torch.no_grad():
        frames, lengths = trained.encode([audio(u) for u in utts])
        ours = trained.generate_frames(frames, lengths, max_new_tokens=caps)
        speech, speech_lens = trained.project(frames, lengths)
        inputs = trained.build_inputs(speech, speech_lens, None, left_pad=True)
        ref = trained.llm.generate(
            inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask, position_ids=inputs.position_ids,
            max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=trained.prompt.eos_id, pad_token_id=trained.prompt.pad_id,
        )
    tok = trained.prompt.tokenizer
    expected = [tok.decode(row[:cap], skip_special_tokens=True).strip() for row, cap in zip(ref.tolist(), caps)]
    assert ours == expected
    assert [len(h) for h in ours][1] == 3  # the caps cut (one character per token in the tiny tokenizer)


@pytest.mark.parametrize("beam", [2, 3])
def test_batched_beam_search_equals_one_by_one(trained, utts, beam: int) -> None:
    alone = [trained.generate([audio(u)], beam=beam, max_new_tokens=MAX_NEW)[0] for u in utts]
    batch = trained.generate([audio(u) for u in utts], beam=beam, max_new_tokens=MAX_NEW)
    assert batch == alone
    assert len(set(alone)) > 1 and all(alone)


def test_transcribe_order_and_batch_size_do_not_matter(trained, utts, greedy_alone) -> None:
    """``transcribe`` sorts by duration into batches and puts the results back in order."""
    cfg = DecodeConfig(max_new_tokens=MAX_NEW, tokens_per_second=None, batch_size=2)
    assert transcribe(trained, utts, cfg, progress=False) == greedy_alone
    assert transcribe(trained, utts, replace(cfg, batch_size=16), progress=False) == greedy_alone
    assert transcribe(trained, utts[::-1], replace(cfg, batch_size=3), progress=False) == greedy_alone[::-1]


def test_max_new_tokens_is_respected(trained, utts, greedy_alone) -> None:
    waves = [audio(u) for u in utts]
    short = trained.generate(waves, max_new_tokens=5)
    for s, full in zip(short, greedy_alone):
        assert len(s) <= 5  # one character per token in the tiny tokenizer
        assert full.startswith(s)  # greedy: the first 5 tokens of the longer decoding
    assert any(len(full) > 5 for full in greedy_alone)  # so the limit did cut
    for beam in (1, 2):
        for out in trained.generate(waves, beam=beam, max_new_tokens=3):
            assert len(out) <= 3


def _seconds(model, u) -> float:
    """The audio's seconds as the decoder sees them: its encoder frames over the frame rate."""
    return model.encoder.num_frames(len(audio(u))) / model.encoder.frame_rate


def test_token_cap_from_duration_is_per_utterance(trained, utts) -> None:
    cfg = DecodeConfig(max_new_tokens=200, tokens_per_second=2.0)
    for u in utts:
        s = _seconds(trained, u)
        assert abs(s - u.duration) < 0.1
        assert _token_cap(s, cfg) == math.ceil(s * 2.0) + 16
        assert _token_cap(s, replace(cfg, max_new_tokens=10)) == 10
        assert _token_cap(s, replace(cfg, tokens_per_second=None)) == 200
    # Each utterance gets its own cap inside a batch, so batching cannot change a greedy transcript.
    cfg = replace(cfg, tokens_per_second=0.5)  # caps of 17 to 19 tokens: below what the model says
    batched = transcribe(trained, utts, replace(cfg, batch_size=16), progress=False)
    alone = [transcribe(trained, [u], replace(cfg, batch_size=1), progress=False)[0] for u in utts]
    assert batched == alone
    for h, u in zip(batched, utts):
        assert len(h) <= _token_cap(_seconds(trained, u), cfg)  # one character per token in the tiny tokenizer
    uncapped = transcribe(trained, utts, replace(cfg, tokens_per_second=None, max_new_tokens=MAX_NEW), progress=False)
    assert any(len(full) > _token_cap(_seconds(trained, u), cfg) for full, u in zip(uncapped, utts))  # so the caps did cut


def test_a_wrong_manifest_duration_does_not_cap_decoding(trained, utts) -> None:
    """The old cap came from the manifest's ``duration``: a manifest saying 0.1 s for a 10-s file
    cut every transcript to 17 tokens. The cap now comes from the audio."""
    cfg = DecodeConfig(max_new_tokens=MAX_NEW, tokens_per_second=2.0, batch_size=4)
    lying = [replace(u, duration=0.1) for u in utts]
    assert transcribe(trained, lying, cfg, progress=False) == transcribe(trained, utts, cfg, progress=False)


def test_evaluate_split_rows_and_wer(trained, utts, greedy_alone) -> None:
    cfg = DecodeConfig(max_new_tokens=MAX_NEW, tokens_per_second=None, batch_size=4)
    res = evaluate_split(trained, "mini", utts, cfg, progress=False)
    assert res.name == "mini" and len(res.rows) == len(utts)
    wer, per_utt = word_errors([u.text for u in utts], greedy_alone)
    assert res.wer == wer
    for row, u, h, s in zip(res.rows, utts, greedy_alone, per_utt):
        assert row == {"id": u.id, "reference": u.text, "hypothesis": h, "errors": s.errors, "ref_words": s.ref_words}
    assert sum(r["ref_words"] for r in res.rows) == wer.ref_words


def test_teacher_forced_is_token_weighted_and_batch_independent(trained, utts) -> None:
    a = teacher_forced(trained, utts, batch_size=1)
    b = teacher_forced(trained, utts, batch_size=4)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["acc"] == pytest.approx(b["acc"])
    with torch.no_grad():
        out = trained([audio(u) for u in utts], [u.text for u in utts])
    assert a["loss"] == pytest.approx(float(out["loss"]), rel=1e-5)
    assert a["acc"] == pytest.approx(int(out["correct"]) / int(out["tokens"]))


def test_decoding_leaves_the_training_mode_as_it_was(trained, utts) -> None:
    cfg = DecodeConfig(max_new_tokens=3, tokens_per_second=None)
    trained.train()
    try:
        transcribe(trained, utts[:2], cfg, progress=False)
        teacher_forced(trained, utts[:2], batch_size=2)
        assert trained.training and trained.projector.training
    finally:
        trained.eval()


def test_tokens_per_position_caps_each_row_by_what_the_llm_reads(trained, utts) -> None:
    """decode.tokens_per_position caps a row at ceil(r x its speech positions) + 4 tokens, per row, so
    batching still cannot change a transcript; None leaves decoding as it was."""
    cfg = DecodeConfig(max_new_tokens=MAX_NEW, tokens_per_second=None, tokens_per_position=0.05, batch_size=16)
    with torch.no_grad():
        frames, lengths = trained.encode([audio(u) for u in utts])
        positions = trained.project(frames, lengths)[1].tolist()
    caps = [math.ceil(0.05 * n) + 4 for n in positions]
    batched = transcribe(trained, utts, cfg, progress=False)
    alone = [transcribe(trained, [u], replace(cfg, batch_size=1), progress=False)[0] for u in utts]
    assert batched == alone
    assert all(len(h) <= c for h, c in zip(batched, caps))  # one character per token in the tiny tokenizer
    free = transcribe(trained, utts, replace(cfg, tokens_per_position=None), progress=False)
    assert any(len(f) > c for f, c in zip(free, caps))  # so the caps did cut
    assert [f[: len(b)] for f, b in zip(free, batched)] == batched  # greedy: a prefix of the uncapped text
