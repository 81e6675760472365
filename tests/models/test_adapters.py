"""Downsampler and projectors: shapes, exact lengths, no leakage of padding, parameter counts."""
from __future__ import annotations

import pytest
import torch

from harness.config import AdapterConfig, QFormerOptions
from harness.models.projectors import PROJECTORS, Downsampler, LinearProjector

KS = list(range(1, 11))
TAILS = ["drop", "pad"]
D_ENC, D_LLM = 12, 20


def _batch(seed: int = 0, lengths=(37, 23, 10, 1), T: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``B, T, D_ENC`` whose padding holds a loud sentinel (1e4), and their lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    T = T or max(lengths)
    x = torch.randn(len(lengths), T, D_ENC, generator=g)
    for b, n in enumerate(lengths):
        x[b, n:] = 1e4
    return x, lengths_t


def _expected_len(n: int, k: int, tail: str) -> int:
    return n // k if tail == "drop" else -(-n // k)


# ------------------------------------------------------------------------------- Downsampler


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("k", KS)
def test_downsampler_shapes_lengths_and_content(k: int, tail: str) -> None:
    x, lengths = _batch(T=41)  # T longer than every utterance: padding past the longest too
    down = Downsampler(k, tail)
    y, out_len = down(x, lengths)
    expected = [_expected_len(int(n), k, tail) for n in lengths]
    assert out_len.tolist() == expected
    assert torch.equal(down.output_lengths(lengths), out_len)
    assert y.shape == (4, max(expected), D_ENC * k)
    for b, n in enumerate(lengths.tolist()):
        for j in range(expected[b]):
            # Group j is frames jk .. jk+k-1 side by side; frames past the utterance are zeros.
            want = torch.zeros(k, D_ENC)
            stop = min((j + 1) * k, n)
            want[: stop - j * k] = x[b, j * k : stop]
            assert torch.equal(y[b, j], want.reshape(-1)), (b, j)
    assert y.abs().max() < 1e3  # the padding sentinel never reaches an output


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_downsampler_output_does_not_depend_on_padding(k: int, tail: str) -> None:
    x, lengths = _batch()
    y1, _ = Downsampler(k, tail)(x, lengths)
    x2 = x.clone()
    for b, n in enumerate(lengths.tolist()):
        x2[b, n:] = torch.randn_like(x2[b, n:]) * 100
    y2, out_len = Downsampler(k, tail)(x2, lengths)
    for b, n in enumerate(out_len.tolist()):
        assert torch.equal(y1[b, :n], y2[b, :n])


def test_downsampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        Downsampler(0)
    with pytest.raises(ValueError, match="tail must be"):
        Downsampler(2, "wrap")


def test_downsampler_utterance_shorter_than_k() -> None:
    x, lengths = _batch(lengths=(3, 2))
    y, n = Downsampler(5, "drop")(x, lengths)
    assert n.tolist() == [0, 0] and y.shape == (2, 0, 5 * D_ENC)
    y, n = Downsampler(5, "pad")(x, lengths)
    assert n.tolist() == [1, 1] and y.shape == (2, 1, 5 * D_ENC)


# ------------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(("k", "d_enc", "hidden", "d_llm"), [(1, 12, 7, 20), (5, 32, 64, 64), (10, 80, 33, 48)])
def test_linear_projector_parameter_count(k: int, d_enc: int, hidden: int, d_llm: int) -> None:
    proj = LinearProjector(d_enc, d_llm, AdapterConfig(k=k, hidden=hidden))
    n = sum(p.numel() for p in proj.parameters())
    assert n == k * d_enc * hidden + hidden + hidden * d_llm + d_llm


@pytest.mark.parametrize(
    ("d_enc", "d_llm", "expected"),
    [
        (384, 576, 5_114_432),  # Whisper-tiny into SmolLM2-135M
        (1280, 2048, 17_305_600),  # Whisper-large into TinyLLaMA: the paper's 17.31M
    ],
)
def test_linear_projector_parameter_count_paper_k5(d_enc: int, d_llm: int, expected: int) -> None:
    proj = LinearProjector(d_enc, d_llm, AdapterConfig(k=5, hidden=2048))
    n = sum(p.numel() for p in proj.parameters())
    assert n == 5 * d_enc * 2048 + 2048 + 2048 * d_llm + d_llm == expected


# ------------------------------------------------------------------------------- projectors


def _projector(name: str, k: int, tail: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = AdapterConfig(projector=name, k=k, tail=tail, hidden=32, qformer=QFormerOptions(layers=1, **kw))
    return PROJECTORS.get(name)(D_ENC, D_LLM, cfg).eval()


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("name", ["linear", "conv1d", "qformer"])
def test_projector_shapes_and_lengths(name: str, k: int, tail: str) -> None:
    proj = _projector(name, k, tail)
    x, lengths = _batch(T=41)
    with torch.no_grad():
        y, out_len = proj(x, lengths)
    expected = [_expected_len(int(n), k, tail) for n in lengths]
    assert out_len.tolist() == expected
    assert torch.equal(proj.output_lengths(lengths), out_len)
    assert y.shape == (4, max(expected), D_LLM)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("k", [1, 3, 4, 10])
@pytest.mark.parametrize("name", ["linear", "conv1d", "qformer"])
def test_projector_batch_equals_one_by_one(name: str, k: int, tail: str) -> None:
    """Each utterance's outputs depend on its own frames only (padding and batch-mates are invisible)."""
    proj = _projector(name, k, tail)
    x, lengths = _batch(seed=1)
    with torch.no_grad():
        y, out_len = proj(x, lengths)
        for b, n in enumerate(lengths.tolist()):
            alone, m = proj(x[b : b + 1, :n], lengths[b : b + 1])
            assert int(m) == int(out_len[b])
            assert torch.allclose(y[b, : out_len[b]], alone[0], atol=1e-5), b


@pytest.mark.parametrize("queries", [2, 3])
def test_qformer_queries_multiply_the_length(queries: int) -> None:
    proj = _projector("qformer", 4, "pad", queries=queries)
    x, lengths = _batch()
    with torch.no_grad():
        y, out_len = proj(x, lengths)
    expected = [_expected_len(int(n), 4, "pad") * queries for n in lengths]
    assert out_len.tolist() == expected and y.shape == (4, max(expected), D_LLM)
    assert torch.equal(proj.output_lengths(lengths), out_len)


@pytest.mark.parametrize("hidden", [64, 200, 500, 2048])
def test_qformer_builds_for_any_hidden_size(hidden: int) -> None:
    """Attention heads must divide the Q-Former width (hidden=200 once gave 3 heads and crashed)."""
    proj = PROJECTORS.get("qformer")(D_ENC, D_LLM, AdapterConfig(projector="qformer", k=2, hidden=hidden, qformer=QFormerOptions(layers=1)))
    width = min(hidden, 768)
    assert proj.qformer.config.hidden_size == width
    assert width % proj.qformer.config.num_attention_heads == 0
    x, lengths = _batch(lengths=(6, 3))
    y, n = proj.eval()(x, lengths)
    assert y.shape == (2, 3, D_LLM) and n.tolist() == [3, 1]


@pytest.mark.parametrize("tail", TAILS)
def test_linear_projector_is_concat_then_mlp(tail: str) -> None:
    proj = _projector("linear", 3, tail)
    x, lengths = _batch(lengths=(10,))
    with torch.no_grad():
        y, n = proj(x, lengths)
        groups = [x[0, j * 3 : (j + 1) * 3] for j in range(int(n[0]))]
        groups = [torch.cat([g, torch.zeros(3 - g.shape[0], D_ENC)]).reshape(-1) for g in groups]
        want = proj.fc2(torch.relu(proj.fc1(torch.stack(groups))))
    assert torch.allclose(y[0], want, atol=1e-6)


def test_conv1d_projector_is_a_strided_convolution_over_time() -> None:
    """Conv1d(D, H, kernel=stride=k) over the frame sequence, then the MLP (drop tail)."""
    k = 4
    proj = _projector("conv1d", k, "drop")
    x, lengths = _batch(lengths=(23,))
    with torch.no_grad():
        y, n = proj(x, lengths)
        h = torch.nn.functional.conv1d(x[:, :23].transpose(1, 2), proj.conv.weight, proj.conv.bias, stride=k)  # 1, H, 5
        want = proj.fc2(torch.relu(proj.fc1(torch.relu(h.transpose(1, 2)))))
    assert int(n[0]) == 23 // k == want.shape[1]
    assert torch.allclose(y, want, atol=1e-5)


def test_qformer_tail_window_attends_only_to_real_frames() -> None:
    """With tail=pad the last window holds 3 real frames of k=5: its token is what the Q-Former makes
    of those 3 frames alone (the zero padding is masked out of cross-attention)."""
    proj = _projector("qformer", 5, "pad")
    x, lengths = _batch(lengths=(13,))
    with torch.no_grad():
        y, n = proj(x, lengths)
        assert int(n[0]) == 3
        tail = proj.qformer(query_embeds=proj.queries, encoder_hidden_states=x[:, 10:13]).last_hidden_state
        full = proj.qformer(query_embeds=proj.queries, encoder_hidden_states=x[:, 5:10]).last_hidden_state
    assert torch.allclose(y[0, 2], proj.proj(tail)[0, 0], atol=1e-5)
    assert torch.allclose(y[0, 1], proj.proj(full)[0, 0], atol=1e-5)
