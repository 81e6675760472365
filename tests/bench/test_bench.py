"""The benchmark's FLOP count matches PyTorch's own counter; the benchmark runs end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import audio, tiny_config
from harness.bench.bench import BenchSetup, run_bench
from harness.data.manifest import write_manifest
from harness.bench.flops import step_flops
from harness.models import build_model
from harness.models.fast import onednn as packed


@pytest.mark.parametrize("share_prefix", [True, False])
def test_step_flop_count_equals_pytorchs_counter(utts_by_duration, share_prefix: bool) -> None:
    """Two unpadded utterances, eager attention (plain matmuls the counter sees): forward + backward
    of a training step costs exactly what the shape formula says, with the prompt prefix run once for
    the batch (forward only) or once per utterance (forward and backward, the reference way)."""
    model = build_model(tiny_config("adapter.hidden=48"))
    model.llm.set_attn_implementation("eager")
    model.use_onednn_linears(False)  # the counter sees aten matmuls, not oneDNN's packed linear
    model.share_prefix = share_prefix
    model.train()
    utts = [utts_by_duration[2], utts_by_duration[2]]  # equal lengths: no padding
    with torch.no_grad():
        frames, lengths = model.encode([audio(u) for u in utts])
    counter = FlopCounterMode(display=False)
    with counter:
        out = model.forward_frames(frames, lengths, [u.text for u in utts])
        out["loss"].backward()
    counted = counter.get_total_flops()

    speech = [int(n) for n in model.projector.output_lengths(lengths)]
    target = [len(model.prompt.target_ids(u.text)) for u in utts]
    P = len(model.prompt.prefix_ids)
    seq = [P + s + len(model.prompt.suffix_ids) + t for s, t in zip(speech, target)]
    p = model.projector
    # What the step runs: the prefix once, forward only; or whole rows, prefix included, forward and backward.
    executed = dict(prefix=P, shared_prefix=True) if share_prefix else dict(prefix=0)
    args = dict(seq_lens=seq, labelled=target, speech_tokens=speech, **executed,
                projector_dims=(p.fc1.in_features, p.fc1.out_features, p.fc2.out_features))
    ours = step_flops(model.llm.config, causal=False, **args)
    assert ours.total == pytest.approx(counted, rel=1e-3), (ours.as_dict(), counted)
    # Causal attention (what is useful) is a bit more than half the dense count.
    causal = step_flops(model.llm.config, **args)
    assert 0.5 * ours.attention < causal.attention < 0.6 * ours.attention
    assert causal.llm_linear == ours.llm_linear and causal.lm_head == ours.lm_head


def test_model_count_runs_the_prefix_forward_in_every_row_and_never_backward() -> None:
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=2, vocab_size=100)
    args = dict(seq_lens=[20, 30, 25], labelled=[5, 6, 4], speech_tokens=[8, 12, 10], projector_dims=(80, 32, 64))
    rows = step_flops(cfg, **args)  # whole rows: every token forward and backward
    model = step_flops(cfg, prefix=6, **args)
    executed = step_flops(cfg, prefix=6, shared_prefix=True, **args)
    per_token = rows.llm_linear / (2 * 75)  # forward + input-gradient backward, per token
    assert rows.llm_linear - model.llm_linear == pytest.approx(per_token * 3 * 6)  # 3 prefixes: no backward
    assert model.llm_linear - executed.llm_linear == pytest.approx(per_token * 2 * 6)  # 3 prefix forwards -> 1
    assert rows.attention > model.attention > executed.attention
    assert rows.lm_head == model.lm_head == executed.lm_head and rows.projector == executed.projector
    with pytest.raises(ValueError, match="prefix of 21 tokens"):
        step_flops(cfg, prefix=21, **args)


def test_forward_only_count_is_a_third_to_a_half_of_the_step() -> None:
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=2, vocab_size=100)
    args = dict(seq_lens=[20, 30], labelled=[5, 6], speech_tokens=[8, 12], projector_dims=(80, 32, 64))
    fwd, step = step_flops(cfg, backward=False, **args), step_flops(cfg, **args)
    assert step.llm_linear == 2 * fwd.llm_linear  # frozen weights: input gradients only
    assert step.attention == 3 * fwd.attention
    assert fwd.total * 2 <= step.total <= fwd.total * 3


def test_bench_runs_end_to_end_on_tiny_models(tmp_path: Path, libri, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    utts = sorted((u for s in libri.values() for u in s), key=lambda u: u.duration)[:12]
    write_manifest(tmp_path / "train.jsonl", utts)
    write_manifest(tmp_path / "dev.jsonl", utts[:5])
    setup = BenchSetup(train=str(tmp_path / "train.jsonl"), dev=str(tmp_path / "dev.jsonl"), encoder="tiny:whisper",
                       llm="tiny:llama", steps=3, warmup=1, eval_utterances=4, decode_utterances=5, grid_utterances=8,
                       device="cpu", workdir=str(tmp_path / "work"))
    result = run_bench(setup, out=tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert on_disk["train"]["speedup"] == pytest.approx(result["train"]["speedup"])
    ours, ref = result["train"]["ours"], result["train"]["reference"]
    assert ours["config"]["input_mode"] == "native" and ours["config"]["cache"] is True
    assert ref["config"]["input_mode"] == "pad30" and ref["config"]["full_vocab_logits"] is True
    assert ours["timed_steps"] == ref["timed_steps"] == 2
    for part in (ours, ref, result["grid"], result["decode"]):
        assert part["peak_rss_gb"] > 0.1
    assert 0 < ours["useful_flops_fraction"] and ours["matmul"]["flops_per_second"] > 1e8
    assert ours["matmul"]["flops_per_second"] == pytest.approx(max(ours["matmul"]["by_kernel"].values()), rel=0.5)
    assert ours["config"]["packed_weights"] is packed.available() and ref["config"]["packed_weights"] is False
    assert ours["config"]["share_prefix"] is True and ref["config"]["share_prefix"] is False
    assert {"loss", "acc", "wer"} <= set(ours["dev_after_steps"])
    assert result["grid"]["utterances"] == 8 and result["grid"]["with_cache_seconds"] > 0
    assert [c["hashed"] for c in result["grid"]["lookups"]] == [8, 0, 0, 0]  # later cells read the digest index
    assert result["decode"]["identical_transcripts"] is True and result["decode"]["differing"] == []
    assert result["decode"]["matmul_batching_ceiling"] > 0
    assert set(result["targets"]) == {"train_speedup", "grid_cache_vs_one_pass", "decode_speedup", "useful_flops_fraction"}
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "reference settings" in md and "identical" in md and "digest index" in md


def test_levers_script_times_every_lever_on_the_same_batches(tmp_path: Path, libri, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    from harness.bench.levers import main

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    utts = sorted((u for s in libri.values() for u in s), key=lambda u: u.duration)[:8]
    write_manifest(tmp_path / "train.jsonl", utts)
    main(["--train", str(tmp_path / "train.jsonl"), "--encoder", "tiny:whisper", "--llm", "tiny:llama", "--device", "cpu",
          "--batches", "2", "--rounds", "2", "--workdir", str(tmp_path / "work")])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["all levers on"].endswith("| 1.00x |") and rows["fused AdamW"].endswith("| 1.00x |")
    assert {"prompt prefix run in every row", "frozen linears through F.linear", "AdamW, PyTorch's default implementation"} <= set(rows)
    with pytest.raises(SystemExit):
        main(["--train", str(tmp_path / "missing.jsonl")])
    assert "missing.jsonl not found" in capsys.readouterr().err
