"""SpeechLLM: the sequence the LLM sees, label masking, padding invariance, what trains and what not."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import audio, tiny_config
from harness.config import LLMConfig
from harness.models import IGNORE, Prompt, build_model
from harness.models.sources import load_llm, tiny_tokenizer
from harness.models.speech_llm import _cache_kwarg

# transformers' WavLM attention passes a bool padding mask with a float position bias to torch.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

EOS = "<|im_end|>"


@pytest.fixture(scope="module")
def utts(utts_by_duration) -> list:
    """Three real utterances of different lengths (2.1 s, 3.3 s, 4.8 s)."""
    return [utts_by_duration[i] for i in (0, 2, 8)]


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_config()).eval()


def _spliced(model, utts, *, left_pad: bool, with_targets: bool = True):
    waves = [audio(u) for u in utts]
    with torch.no_grad():
        frames, lengths = model.encode(waves)
        speech, speech_lens = model.project(frames, lengths)
        targets = [model.prompt.target_ids(u.text) for u in utts] if with_targets else None
        inputs = model.build_inputs(speech, speech_lens, targets, left_pad=left_pad)
    return speech, speech_lens, targets, inputs


# ------------------------------------------------------------------------------- the sequence


def test_only_transcript_and_eos_carry_labels(model, utts) -> None:
    tok = model.prompt.tokenizer
    speech, speech_lens, targets, inputs = _spliced(model, utts, left_pad=False)
    P, Q = len(model.prompt.prefix_ids), len(model.prompt.suffix_ids)
    for b, u in enumerate(utts):
        n_real = int(inputs.attention_mask[b].sum())
        S, T = int(speech_lens[b]), len(targets[b])
        assert n_real == P + S + Q + T
        assert inputs.attention_mask[b, :n_real].all() and not inputs.attention_mask[b, n_real:].any()  # right-padded
        labelled = (inputs.labels[b] != IGNORE).nonzero().squeeze(-1).tolist()
        assert labelled == list(range(n_real - T, n_real))  # exactly the last T real positions
        ids = inputs.labels[b, labelled].tolist()
        assert tok.decode(ids) == u.text.lower() + EOS  # the cased transcript, then EOS
        assert ids[-1] == tok.eos_token_id


def test_embeddings_are_prefix_speech_suffix_target(model, utts) -> None:
    embed = model.llm.get_input_embeddings()
    speech, speech_lens, targets, inputs = _spliced(model, utts, left_pad=False)
    pre = embed(torch.tensor(model.prompt.prefix_ids))
    suf = embed(torch.tensor(model.prompt.suffix_ids))
    for b in range(len(utts)):
        S = int(speech_lens[b])
        tgt = embed(torch.tensor(targets[b]))
        want = torch.cat([pre, speech[b, :S], suf, tgt])
        assert torch.equal(inputs.embeds[b, : want.shape[0]], want)
        assert not inputs.embeds[b, want.shape[0] :].any()  # padding is zeros
        assert inputs.position_ids[b, : want.shape[0]].tolist() == list(range(want.shape[0]))


def test_left_padded_generation_inputs(model, utts) -> None:
    _, speech_lens, _, inputs = _spliced(model, utts, left_pad=True, with_targets=False)
    assert inputs.labels is None
    L = inputs.embeds.shape[1]
    P, Q = len(model.prompt.prefix_ids), len(model.prompt.suffix_ids)
    for b in range(len(utts)):
        n = P + int(speech_lens[b]) + Q
        assert inputs.attention_mask[b].tolist() == [0] * (L - n) + [1] * n
        assert inputs.position_ids[b, L - n :].tolist() == list(range(n))  # count only real tokens


def test_left_padded_batch_predicts_what_each_utterance_predicts_alone(model, utts) -> None:
    """The first generated token of a left-padded batch is computed exactly as one-by-one."""
    speech, speech_lens, _, inputs = _spliced(model, utts, left_pad=True, with_targets=False)
    with torch.no_grad():
        batch = model.llm(
            inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask, position_ids=inputs.position_ids
        ).logits[:, -1]
        for b in range(len(utts)):
            S = int(speech_lens[b])
            one = model.build_inputs(speech[b : b + 1, :S], speech_lens[b : b + 1], None, left_pad=True)
            alone = model.llm(
                inputs_embeds=one.embeds, attention_mask=one.attention_mask, position_ids=one.position_ids
            ).logits[0, -1]
            assert torch.allclose(batch[b], alone, atol=1e-4), b


def test_shared_prefix_inputs_continue_the_cached_prefix(model, utts) -> None:
    """Rows without the prefix: positions and mask continue the cached prefix, and the next-token
    logits equal those of the whole left-padded rows."""
    speech, speech_lens, _, whole = _spliced(model, utts, left_pad=True, with_targets=False)
    P, Q = len(model.prompt.prefix_ids), len(model.prompt.suffix_ids)
    with torch.no_grad():
        shared = model.build_inputs(speech, speech_lens, None, left_pad=True, shared_prefix=True)
        assert shared.cache.get_seq_length() == P and shared.embeds.shape[1] == whole.embeds.shape[1] - P
        L = shared.embeds.shape[1]
        for b in range(len(utts)):
            n = int(speech_lens[b]) + Q
            assert shared.attention_mask[b].tolist() == [1] * P + [0] * (L - n) + [1] * n
            assert shared.position_ids[b, L - n :].tolist() == list(range(P, P + n))
        logits = model.llm(inputs_embeds=shared.embeds, attention_mask=shared.attention_mask,
                           position_ids=shared.position_ids, **{_cache_kwarg(type(model.llm)): shared.cache}).logits[:, -1]
        want = model.llm(inputs_embeds=whole.embeds, attention_mask=whole.attention_mask,
                         position_ids=whole.position_ids).logits[:, -1]
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)


def test_plain_prompt_style(utts) -> None:
    m = build_model(tiny_config("llm.prompt_style=plain"))
    tok, p = m.prompt.tokenizer, m.prompt
    assert tok.decode(p.prefix_ids) == "USER: "
    assert tok.decode(p.suffix_ids) == " Transcribe speech to text. ASSISTANT:"
    assert tok.decode(p.target_ids("Hello World")) == " hello world" + EOS
    # The labels of a real batch are the same " <transcript><eos>".
    _, _, _, inputs = _spliced(m, utts[:1], left_pad=False)
    assert tok.decode(inputs.labels[0][inputs.labels[0] != IGNORE].tolist()) == " " + utts[0].text.lower() + EOS


def test_chat_prompt_style() -> None:
    m = build_model(tiny_config("llm.prompt_style=chat"))
    tok, p = m.prompt.tokenizer, m.prompt
    assert tok.decode(p.prefix_ids) == "<|im_start|>user\n"
    assert tok.decode(p.suffix_ids) == " Transcribe speech to text.<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(p.target_ids("Hello World")) == "hello world" + EOS
    # The special tokens are single tokens, not spelled out character by character.
    assert p.prefix_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.convert_tokens_to_ids(EOS) in p.suffix_ids


def test_chat_prompt_with_system_turn_and_own_instruction() -> None:
    tok = tiny_tokenizer()
    p = Prompt(tok, LLMConfig(prompt_style="chat", system_prompt="You write down speech.", prompt="Write it down."))
    assert tok.decode(p.prefix_ids) == "<|im_start|>system\nYou write down speech.<|im_end|>\n<|im_start|>user\n"
    assert tok.decode(p.suffix_ids) == " Write it down.<|im_end|>\n<|im_start|>assistant\n"
    plain = Prompt(tok, LLMConfig(prompt_style="plain", prompt="Write it down."))
    assert tok.decode(plain.suffix_ids) == " Write it down. ASSISTANT:"


def test_chat_style_needs_a_chat_template() -> None:
    tok = tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        Prompt(tok, LLMConfig(prompt_style="chat"))


@pytest.mark.parametrize(
    ("casing", "expected"),
    [("lower", "it's mister quilter"), ("upper", "IT'S MISTER QUILTER"), ("as_is", "It's Mister QUILTER")],
)
def test_casing(casing: str, expected: str) -> None:
    tok = tiny_tokenizer()
    p = Prompt(tok, LLMConfig(casing=casing))
    assert tok.decode(p.target_ids("It's Mister QUILTER")) == expected + EOS


# ------------------------------------------------------------------------------- loss


def test_right_padded_batch_loss_equals_one_by_one(model, utts) -> None:
    waves, texts = [audio(u) for u in utts], [u.text for u in utts]
    with torch.no_grad():
        batch = model(waves, texts)
        singles = [model([w], [t]) for w, t in zip(waves, texts)]
    tokens = [int(s["tokens"]) for s in singles]
    assert tokens == [len(model.prompt.target_ids(t)) for t in texts]
    assert int(batch["tokens"]) == sum(tokens)
    # The batch loss is token-weighted: sum of per-utterance (loss x tokens).
    weighted = sum(float(s["loss"]) * n for s, n in zip(singles, tokens))
    assert float(batch["loss"]) * sum(tokens) == pytest.approx(weighted, rel=1e-5)
    assert int(batch["correct"]) == sum(int(s["correct"]) for s in singles)
    # Sanity: the utterances do differ, so equal sums are not a coincidence of equal losses.
    assert len({round(float(s["loss"]), 4) for s in singles}) == len(singles)


# ------------------------------------------------------------------------------- what trains


def _trainable(m) -> dict[str, int]:
    return {n: p.numel() for n, p in m.named_parameters() if p.requires_grad}


def _projector_count(k: int, d_enc: int, hidden: int, d_llm: int) -> int:
    return k * d_enc * hidden + hidden + hidden * d_llm + d_llm


def test_projector_only_trains_by_default() -> None:
    m = build_model(tiny_config())
    trainable = _trainable(m)
    assert set(trainable) == {f"projector.{n}" for n, _ in m.projector.named_parameters()}
    expected = _projector_count(5, m.encoder.dim, 64, m.llm.get_input_embeddings().weight.shape[1])
    assert expected == 5 * 32 * 64 + 64 + 64 * 64 + 64
    assert sum(trainable.values()) == expected == m.param_counts()["params/trainable"]
    assert set(m.trainable_state_dict()) == set(trainable)
    counts = m.param_counts()
    assert counts["params/total"] == counts["params/projector"] + counts["params/encoder"] + counts["params/llm"]


def test_trainable_whisper_encoder_adds_its_weights_but_not_its_fixed_positions() -> None:
    m = build_model(tiny_config("encoder.trainable=true"))
    enc = {n: p.numel() for n, p in m.encoder.named_parameters()}
    learnable = sum(v for n, v in enc.items() if "embed_positions" not in n)
    assert learnable < sum(enc.values())  # Whisper's sinusoidal positions exist ...
    assert not m.encoder.encoder.embed_positions.weight.requires_grad  # ... and stay frozen
    assert sum(_trainable(m).values()) == _projector_count(5, 32, 64, 64) + learnable


def test_trainable_ssl_encoder_adds_all_its_weights() -> None:
    m = build_model(tiny_config("encoder.name=tiny:hubert", "encoder.trainable=true"))
    enc = sum(p.numel() for p in m.encoder.parameters())
    assert sum(_trainable(m).values()) == _projector_count(5, 32, 64, 64) + enc


@pytest.mark.parametrize(
    ("rank", "targets"), [(8, ("q_proj", "v_proj")), (4, ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))]
)
def test_lora_trainable_count(rank: int, targets: tuple[str, ...]) -> None:
    plain_llm, _ = load_llm("tiny:llama")
    lora = 0
    for name, mod in plain_llm.named_modules():
        if name.split(".")[-1] in targets:
            assert isinstance(mod, torch.nn.Linear)
            lora += rank * (mod.in_features + mod.out_features)  # A: r x in, B: out x r
    assert lora > 0
    m = build_model(tiny_config("llm.lora.enabled=true", f"llm.lora.rank={rank}", f"llm.lora.target_modules=[{', '.join(targets)}]"))
    trainable = _trainable(m)
    assert sum(trainable.values()) == _projector_count(5, 32, 64, 64) + lora
    llm_trainable = [n for n in trainable if n.startswith("llm.")]
    assert llm_trainable and all(".lora_A." in n or ".lora_B." in n for n in llm_trainable)
    assert len(llm_trainable) == 2 * 2 * len(targets)  # A and B, in each of 2 layers


@pytest.mark.parametrize("variant", ["projector", "lora", "encoder"])
def test_frozen_parts_get_no_gradient_and_do_not_move(variant: str, utts) -> None:
    extra = {"projector": [], "lora": ["llm.lora.enabled=true"], "encoder": ["encoder.trainable=true"]}[variant]
    m = build_model(tiny_config(*extra))
    m.train()
    frozen_before = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    out = m([audio(u) for u in utts], [u.text for u in utts])
    out["loss"].backward()
    for n, p in m.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, n
        else:
            assert p.grad is not None, n
            if n.startswith("projector.") or ".lora_B." in n or n.startswith("encoder.encoder.layers."):
                assert p.grad.abs().sum() > 0, n  # (lora_A's first gradient is 0: B starts at 0)
    opt.step()
    for n, p in m.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), n


def test_train_mode_keeps_frozen_parts_in_eval() -> None:
    m = build_model(tiny_config()).train()
    assert m.training and m.projector.training
    assert not m.encoder.training and not m.llm.training  # no dropout in frozen parts
    m = build_model(tiny_config("llm.lora.enabled=true", "encoder.trainable=true")).train()
    assert m.encoder.training and m.llm.training
    m.eval()
    assert not m.projector.training and not m.encoder.training and not m.llm.training


def test_output_norm_matches_the_embedding_rms(utts) -> None:
    m = build_model(tiny_config("adapter.output_norm=true"))
    emb = m.llm.get_input_embeddings().weight
    token_rms = emb.pow(2).mean(-1).sqrt().mean()
    assert torch.isclose(m.embed_rms, token_rms)
    with torch.no_grad():
        frames, lengths = m.encode([audio(u) for u in utts])
        x, n = m.project(frames, lengths)
        raw, _ = m.projector(frames, lengths)
    for b in range(len(utts)):
        rms = x[b, : n[b]].pow(2).mean(-1).sqrt()
        assert torch.allclose(rms, token_rms.expand_as(rms), rtol=1e-4)
        raw_rms = raw[b, : n[b]].pow(2).mean(-1).sqrt()
        assert not torch.allclose(raw_rms, token_rms.expand_as(raw_rms), rtol=1e-2)  # the norm did something
        # Direction is kept: only the scale of each output vector changes.
        assert torch.allclose(torch.nn.functional.cosine_similarity(x[b, : n[b]], raw[b, : n[b]], dim=-1), torch.ones(int(n[b])), atol=1e-5)


# ------------------------------------------------------------------------------- every part end to end


@pytest.mark.parametrize(
    "overrides",
    [
        ("adapter.projector=linear",),
        ("adapter.projector=conv1d", "adapter.k=3"),
        ("adapter.projector=qformer", "adapter.k=4", "adapter.tail=pad", "adapter.qformer.queries=2"),
        ("encoder.name=tiny:hubert", "adapter.k=40"),
        ("encoder.name=tiny:wavlm", "adapter.k=40"),
        ("encoder.name=tiny:wav2vec2", "adapter.k=40"),
        ("encoder.whisper.input_mode=pad30",),
    ],
)
def test_every_encoder_and_projector_trains_end_to_end(overrides: tuple[str, ...], utts) -> None:
    m = build_model(tiny_config(*overrides)).train()
    waves = [audio(u)[: 16000 + 1234 * i] for i, u in enumerate(utts)]  # 1.0 s, 1.08 s, 1.15 s
    out = m(waves, [u.text for u in utts])
    assert torch.isfinite(out["loss"]) and int(out["tokens"]) == sum(len(m.prompt.target_ids(u.text)) for u in utts)
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.projector.parameters())


def test_initialisation_depends_on_the_seed_alone() -> None:
    """Projector and LoRA weights come from ``train.seed``, whatever the process's RNG did before."""
    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.rand(17)  # the global RNG moves between builds, as it does between runs in one process
        return build_model(tiny_config("llm.lora.enabled=true", f"train.seed={seed}")).trainable_state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert any(".lora_A." in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["projector.fc1.weight"], c["projector.fc1.weight"])
    lora_a = next(k for k in a if ".lora_A." in k)
    assert not torch.equal(a[lora_a], c[lora_a])
    # Enabling LoRA does not change the projector's initialisation.
    plain = build_model(tiny_config("train.seed=0")).trainable_state_dict()
    assert torch.equal(plain["projector.fc1.weight"], a["projector.fc1.weight"])
