"""SLAM-ASR: frozen speech encoder -> downsample + projector -> frozen decoder-only LLM.

The sequence the LLM sees for one utterance (``plain`` prompt style, as in the paper)::

    [BOS] USER: <speech embeddings ...> Transcribe speech to text. ASSISTANT: <transcript> <eos>
    |------ prefix ----|-- S_i frames --|------------- suffix ------------|--- target ---|

With the ``chat`` style the prefix/suffix come from the tokenizer's chat template instead. Only
target tokens (transcript + EOS) carry labels; everything else is -100. Training batches are
right-padded, generation batches left-padded; both carry an attention mask and position ids that
count only real tokens, so a padded batch computes exactly what one-by-one processing computes.

The prefix is the same tokens at the same positions in every sequence, and causal attention keeps
everything after it from changing it, so its keys and values are the same in every row (and, with a
frozen LLM, at every step). They are computed for one row, kept while the LLM's weights stay as they
are, and given to the LLM as a KV cache; the rows hold only ``speech + suffix (+ target)``. With
SmolLM2's chat template the prefix is 24 of the ~100 tokens of a sequence that a step no longer runs
forward once per row, nor backward at all.
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.config import DecodeConfig, LLMConfig
from harness.models.projectors import Projector
from harness.models.ctc import CTCHead, CTCPrefixScorer, JointCTCChooser
from harness.models.encoders import SpeechEncoder
from harness.models.fast.kv_cache import preallocated_cache
from harness.models.fast.onednn import use_onednn_linears

IGNORE = -100
SPEECH_MARK = "<|speech|>"


class Prompt:
    """Token ids around the speech embeddings, and the target ids of a transcript."""

    def __init__(self, tokenizer, cfg: LLMConfig) -> None:
        self.tokenizer, self.cfg = tokenizer, cfg
        if tokenizer.eos_token_id is None:
            raise ValueError("the LLM's tokenizer has no EOS token; the transcript could never end")
        self.eos_id: int = tokenizer.eos_token_id
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        if cfg.prompt_style == "plain":
            prefix, suffix = "USER: ", f" {cfg.prompt} ASSISTANT:"
            self.prefix_ids = tokenizer(prefix, add_special_tokens=True).input_ids  # BOS where the model has one
            self.target_lead = " "  # the transcript follows "ASSISTANT:" after a space
        else:
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    f"llm.prompt_style='chat' but the tokenizer of {cfg.name!r} has no chat template; use prompt_style='plain'"
                )
            messages = [] if cfg.system_prompt is None else [{"role": "system", "content": cfg.system_prompt}]
            messages.append({"role": "user", "content": f"{SPEECH_MARK} {cfg.prompt}"})
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prefix, suffix = text.split(SPEECH_MARK)
            self.prefix_ids = tokenizer(prefix, add_special_tokens=False).input_ids  # the template holds BOS
            self.target_lead = ""
        self.suffix_ids = tokenizer(suffix, add_special_tokens=False).input_ids

    def cased(self, text: str) -> str:
        return {"lower": text.lower(), "upper": text.upper(), "as_is": text}[self.cfg.casing]

    def target_ids(self, text: str) -> list[int]:
        return self.tokenizer(self.target_lead + self.cased(text), add_special_tokens=False).input_ids + [self.eos_id]


@dataclass
class LLMInputs:
    embeds: torch.Tensor  # B, L, H
    attention_mask: torch.Tensor  # B, C+L (1 = real token; C = tokens already in `cache`, else 0)
    position_ids: torch.Tensor  # B, L
    labels: torch.Tensor | None  # B, L (IGNORE except target tokens)
    cache: object | None = None  # the shared prompt prefix's keys/values (a transformers Cache), or None


@functools.cache
def _cache_kwarg(module_type: type) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` during 5.x: the name this module's forward takes."""
    return "cache" if "cache" in inspect.signature(module_type.forward).parameters else "past_key_values"


class SpeechLLM(nn.Module):
    """The whole model. Only the projector (and optionally the encoder / LoRA) trains."""

    def __init__(
        self,
        encoder: SpeechEncoder,
        projector: Projector,
        llm: nn.Module,
        prompt: Prompt,
        *,
        train_encoder: bool = False,
        output_norm: bool = False,
        ctc: CTCHead | None = None,
        ctc_weight: float = 0.0,
        ctc_compress: bool = False,
    ) -> None:
        super().__init__()
        self.encoder, self.projector, self.llm, self.prompt = encoder, projector, llm, prompt
        self.train_encoder = train_encoder
        self.output_norm = output_norm
        if (ctc_weight > 0 or ctc_compress) and ctc is None:
            raise ValueError("a CTC weight or CTC compression needs a CTCHead")
        self.ctc, self.ctc_weight, self.ctc_compress = ctc, ctc_weight, ctc_compress
        self.run_lm = True  # False: the LLM does not run in training, only the CTC loss trains (adapter.ctc.lm_after)
        self.full_vocab_logits = False  # True: the reference code's LM head over every position (benchmarks)
        self.share_prefix = True  # False: every row recomputes the prompt prefix (the reference code; benchmarks)
        self.gradient_checkpointing = False
        emb = llm.get_input_embeddings()
        with torch.no_grad():
            # Typical RMS of a token embedding as the LLM sees it (Gemma scales its embeddings).
            sample = emb(torch.arange(min(emb.weight.shape[0], 4096), device=emb.weight.device))
            self.register_buffer("embed_rms", sample.pow(2).mean(-1).sqrt().mean(), persistent=False)
        # Token ids used in every sequence, embedded once per call (they are frozen unless LoRA
        # touches embeddings, which it does not by default).
        self.register_buffer("prefix_ids", torch.tensor(prompt.prefix_ids, dtype=torch.long), persistent=False)
        self.register_buffer("suffix_ids", torch.tensor(prompt.suffix_ids, dtype=torch.long), persistent=False)

    # ---------------------------------------------------------------- speech -> LLM embeddings
    def encode(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms -> encoder frames ``B, T, D`` and lengths (no graph when the encoder is frozen)."""
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            return self.encoder(waves)

    def project(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder frames -> what the LLM reads: ``B, T, D -> B, T', H_llm`` (and lengths)."""
        return self._project(frames, lengths)[:2]

    def _project(self, frames: torch.Tensor, lengths: torch.Tensor):
        """As :meth:`project`, plus the CTC logits of the projector's frames and their lengths (or None)."""
        x, lengths = self.projector(frames, lengths)  # B, T, D -> B, T', H_llm
        if self.ctc is None:
            if self.output_norm:  # match the scale of the token embeddings around the speech
                x = x * (self.embed_rms / (x.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6))
            return x, lengths, None, None
        emb = self.llm.get_input_embeddings()
        logits = self.ctc.logits(x, emb.weight)  # B, T', H -> B, T', V+1
        ctc_lens = lengths
        if self.ctc_compress:  # B, T', H -> B, S, H: one vector per CTC token
            x, lengths = self.ctc.compress(x, lengths, logits, emb.weight, self.embed_rms,
                                           float(getattr(emb, "embed_scale", 1.0)))
        elif self.output_norm:
            x = x * (self.embed_rms / (x.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6))
        return x, lengths, logits, ctc_lens

    @torch.no_grad()
    def ctc_transcribe(self, frames: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """The CTC head's greedy reading of the projector's frames, as text (no LLM involved)."""
        if self.ctc is None:
            raise ValueError("this model has no CTC head (adapter.ctc.weight is 0)")
        _, _, logits, ctc_lens = self._project(frames, lengths)
        ids = self.ctc.greedy(logits, ctc_lens)
        return [t.strip() for t in self.prompt.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    # ---------------------------------------------------------------- sequence assembly
    def build_inputs(
        self, speech: torch.Tensor, speech_lens: torch.Tensor, targets: list[list[int]] | None, *, left_pad: bool,
        shared_prefix: bool = False,
    ) -> LLMInputs:
        """Splice ``prefix + speech + suffix (+ target)`` per utterance into one padded batch.

        ``shared_prefix``: the rows start after the prefix, whose keys/values come as a cache computed
        once for the batch (:meth:`prefix_cache`); positions and the attention mask cover the prefix.
        """
        embed = self.llm.get_input_embeddings()
        dev = speech.device
        B = speech.shape[0]
        P = self.prefix_ids.numel()
        suf = embed(self.suffix_ids)  # Q, H
        lead = [] if shared_prefix else [embed(self.prefix_ids)]  # P, H
        tgt_ids = [torch.tensor(t, dtype=torch.long, device=dev) for t in targets] if targets is not None else None
        tgt_emb = embed(torch.cat(tgt_ids)).split([len(t) for t in tgt_ids]) if tgt_ids else None
        seqs, labels = [], []
        for b in range(B):
            parts = [*lead, speech[b, : int(speech_lens[b])].to(suf.dtype), suf]
            lab = [torch.full((sum(p.shape[0] for p in parts),), IGNORE, dtype=torch.long, device=dev)]
            if tgt_emb is not None:
                parts.append(tgt_emb[b])
                lab.append(tgt_ids[b])
            seqs.append(torch.cat(parts))  # L_b, H
            labels.append(torch.cat(lab))
        L = max(s.shape[0] for s in seqs)
        H = seqs[0].shape[1]
        embeds = speech.new_zeros((B, L, H), dtype=suf.dtype)
        lab_pad = torch.full((B, L), IGNORE, dtype=torch.long, device=dev)
        mask = torch.zeros((B, L), dtype=torch.long, device=dev)
        for b, (s, lb) in enumerate(zip(seqs, labels)):
            sl = slice(L - s.shape[0], L) if left_pad else slice(0, s.shape[0])
            embeds[b, sl], lab_pad[b, sl], mask[b, sl] = s, lb, 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # count only real tokens
        cache = None
        if shared_prefix:  # B, L -> B, P+L: the cached prefix is real in every row
            position_ids = position_ids + P
            mask = torch.cat([mask.new_ones(B, P), mask], dim=1)
            cache = self.prefix_cache(B)
        return LLMInputs(embeds, mask, position_ids, lab_pad if targets is not None else None, cache)

    def prefix_cache(self, batch: int):
        """The prompt prefix's keys and values at every layer, computed for one row and repeated ``batch`` times.

        A frozen LLM gives the same keys and values at every step, so they are computed once and kept
        until the LLM's weights or the autocast precision change (a step then runs no prefix at all).
        When the LLM trains (LoRA) they are computed with gradients in every call, so the single row's
        gradient collects what every row sends back.
        """
        from transformers import DynamicCache

        if any(p.requires_grad for p in self.llm.parameters()):
            cache = self._run_prefix()
            cache.batch_repeat_interleave(batch)
            return cache
        dev, weight = self.prefix_ids.device.type, self.llm.get_input_embeddings().weight
        key = (torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev), weight.dtype, weight.data_ptr(),
               sum(p._version for p in self.llm.parameters()))  # in-place changes (load_state_dict) bump versions
        memo = self.__dict__.get("_prefix_memo")  # outside the module tree: no state_dict entry
        if memo is None or memo[0] != key:
            with torch.no_grad():
                memo = self.__dict__["_prefix_memo"] = (key, [(layer.keys, layer.values) for layer in self._run_prefix().layers])
        cache = DynamicCache(config=self.llm.config)
        for layer, (k, v) in zip(cache.layers, memo[1]):  # 1, H, P, D -> B, H, P, D
            layer.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
        return cache

    def _run_prefix(self):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.llm.config)
        decoder = self.llm.get_decoder()
        prefix = self.llm.get_input_embeddings()(self.prefix_ids)[None]  # 1, P, H
        positions = torch.arange(prefix.shape[1], device=prefix.device)[None]
        decoder(inputs_embeds=prefix, position_ids=positions, use_cache=True, **{_cache_kwarg(type(decoder)): cache})
        return cache

    @property
    def shares_prefix(self) -> bool:
        """Whether batches use the shared prefix cache. Not under gradient checkpointing (transformers drops
        a layer's cache when it recomputes the layer) nor ``torch.compile`` (a cache argument recompiles)."""
        return (self.share_prefix and self.prefix_ids.numel() > 0 and not self.gradient_checkpointing
                and "_compiled_decoder" not in self.__dict__)

    # ---------------------------------------------------------------- training objective
    def lm_loss(self, inputs: LLMInputs) -> dict[str, torch.Tensor]:
        """Cross-entropy and teacher-forced accuracy over target tokens.

        The LM head is applied only at positions that predict a label: with a 49k-token vocabulary
        the full-vocabulary logits of every prompt and speech position are most of the step's cost.
        """
        decoder = self.__dict__.get("_compiled_decoder")
        if decoder is None:
            decoder = self.llm.get_decoder()
        cached = {} if inputs.cache is None else {_cache_kwarg(type(decoder)): inputs.cache}
        hidden = decoder(
            inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask, position_ids=inputs.position_ids,
            use_cache=bool(cached), **cached,
        ).last_hidden_state  # B, L, H
        labels = inputs.labels[:, 1:]  # position t predicts token t+1
        sel = labels != IGNORE
        head = self.llm.get_output_embeddings()
        if self.full_vocab_logits:  # B, L-1, H -> B, L-1, V, then keep the N labelled rows
            logits = head(hidden[:, :-1])[sel]
        else:  # N, H -> N, V
            logits = head(hidden[:, :-1][sel])
        cap = getattr(self.llm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        target = labels[sel]
        loss = F.cross_entropy(logits.float(), target)
        correct = (logits.argmax(-1) == target).sum()
        return {"loss": loss, "correct": correct.detach(), "tokens": torch.tensor(target.numel())}

    def forward(self, waves: list[torch.Tensor], texts: list[str]) -> dict[str, torch.Tensor]:
        frames, lengths = self.encode(waves)
        return self.forward_frames(frames, lengths, texts)

    def forward_frames(self, frames: torch.Tensor, lengths: torch.Tensor, texts: list[str]) -> dict[str, torch.Tensor]:
        """Losses of a batch: ``loss`` (LM cross-entropy), ``correct``/``tokens`` (teacher-forced accuracy),
        ``ctc_loss`` with a CTC head, and ``objective``, what training minimises: loss + weight x ctc_loss
        (the CTC loss alone while ``run_lm`` is off; ``loss`` is then NaN and ``correct`` 0)."""
        speech, speech_lens, logits, ctc_lens = self._project(frames, lengths)
        targets = [self.prompt.target_ids(t) for t in texts]
        out: dict[str, torch.Tensor]
        if self.run_lm or not self.training:
            out = self.lm_loss(self.build_inputs(speech, speech_lens, targets, left_pad=False, shared_prefix=self.shares_prefix))
            out["objective"] = out["loss"]
        else:
            n = sum(len(t) for t in targets)
            out = {"loss": torch.tensor(float("nan")), "correct": torch.tensor(0), "tokens": torch.tensor(n),
                   "objective": torch.zeros((), device=speech.device)}
        if logits is not None:
            ctc = self.ctc.loss(logits, ctc_lens, [t[:-1] for t in targets])  # the transcript's tokens, no EOS
            out["ctc_loss"] = ctc.detach()
            if self.ctc_weight > 0:
                out["objective"] = out["objective"] + self.ctc_weight * ctc
        return out

    # ---------------------------------------------------------------- decoding
    @torch.no_grad()
    def generate(
        self, waves: list[torch.Tensor], *, beam: int = 1, max_new_tokens: int = 200
    ) -> list[str]:
        frames, lengths = self.encode(waves)
        return self.generate_frames(frames, lengths, beam=beam, max_new_tokens=max_new_tokens)

    @torch.no_grad()
    def generate_frames(
        self, frames: torch.Tensor, lengths: torch.Tensor, *, beam: int = 1, max_new_tokens: int | list[int] = 200,
        synced: bool = False, tokens_per_position: float | None = None, ctc_weight: float = 0.0, ctc_candidates: int = DecodeConfig.ctc_candidates,
    ) -> list[str]:
        """Transcripts of a batch of encoder frames.

        ``max_new_tokens`` may be one cap per utterance: the batch runs to the largest and each row is
        cut at its own. For greedy decoding that is exactly what decoding the row alone gives (rows never
        influence each other); for beam search a longer horizon can rank a row's beams differently, so
        there the cap only bounds a model that has not learned to stop.
        ``synced``: keep stepping until every process is done (sharded weights need all ranks in each pass).
        ``tokens_per_position``: also cap each row at this many tokens per speech position it reads, plus 4.
        ``ctc_weight`` > 0: greedy joint CTC/LLM decoding with the CTC head (:class:`~harness.models.ctc.JointCTCChooser`,
        over the LLM's ``ctc_candidates`` best tokens and the EOS).
        """
        caps = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * frames.shape[0]
        speech, speech_lens, logits, ctc_lens = self._project(frames, lengths)  # B, T', H (B, S, H with CTC compression)
        if tokens_per_position is not None:
            caps = [min(c, math.ceil(tokens_per_position * int(n)) + 4) for c, n in zip(caps, speech_lens.tolist())]
        choose = None
        if ctc_weight > 0:
            if logits is None:
                raise ValueError("decode.ctc_weight > 0 needs a CTC head (adapter.ctc.weight > 0)")
            log_probs = F.log_softmax(logits.float(), dim=-1)  # B, T', V+1
            scorers = [CTCPrefixScorer(log_probs[b, : int(n)]) for b, n in enumerate(ctc_lens.tolist())]
            choose = JointCTCChooser(scorers, self.prompt.eos_id, weight=ctc_weight, candidates=ctc_candidates)
        return self.generate_embeddings(speech, speech_lens, caps, beam=beam, synced=synced, choose=choose)

    @torch.no_grad()
    def generate_embeddings(
        self, speech: torch.Tensor, speech_lens: torch.Tensor, caps: list[int], *, beam: int = 1, synced: bool = False,
        choose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> list[str]:
        """Transcripts of what the LLM reads in the speech slot (``B, S, H`` in its embedding space), each row
        cut at its own cap of new tokens (see :meth:`generate_frames`). ``choose``: picks each row's next
        token from its logits in greedy decoding (default: the argmax)."""
        if choose is not None and (beam > 1 or synced):
            raise ValueError("joint CTC decoding (decode.ctc_weight > 0) is greedy and single-process: "
                             "it needs decode.beam=1 and unsharded LLM weights")
        if beam == 1 and not synced:
            inputs = self.build_inputs(speech, speech_lens, None, left_pad=True, shared_prefix=self.shares_prefix)
            rows = self._greedy(inputs, caps, choose)
            return [t.strip() for t in self.prompt.tokenizer.batch_decode(rows, skip_special_tokens=True)]
        inputs = self.build_inputs(speech, speech_lens, None, left_pad=True)  # transformers' generate: whole rows
        out = self.llm.generate(
            inputs_embeds=inputs.embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            max_new_tokens=max(caps),
            num_beams=beam,
            do_sample=False,
            synced_gpus=synced,
            eos_token_id=self.prompt.eos_id,
            pad_token_id=self.prompt.pad_id,
            # The checkpoint's own generation config may ask for sampling or penalties; ASR wants none.
            temperature=None, top_p=None, top_k=None, repetition_penalty=None,
        )
        rows = [row[:cap] for row, cap in zip(out.tolist(), caps)]  # only new tokens: the input was embeddings
        return [t.strip() for t in self.prompt.tokenizer.batch_decode(rows, skip_special_tokens=True)]

    @torch.no_grad()
    def _greedy(self, inputs: LLMInputs, caps: list[int],
                choose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[list[int]]:
        """Greedy decoding with the KV cache that drops each row from the batch as soon as it ends.

        A static batch keeps computing rows that have already written EOS (or reached their cap) until
        the last row is done; here they leave the batch, and their KV-cache rows with them. Every row
        still computes exactly what it would alone (its own mask and positions), so transcripts equal
        one-by-one decoding. Returns each row's new tokens without the EOS.
        """
        B = inputs.embeds.shape[0]
        tokens: list[list[int]] = [[] for _ in range(B)]
        active = torch.arange(B, device=inputs.embeds.device)  # batch row -> utterance
        mask, pos = inputs.attention_mask, inputs.position_ids[:, -1]  # left-padded: last column is real
        # Room for the prompt, the rows and every token they may write, filled in place (no copy per step).
        cache = preallocated_cache(self.llm.config, mask.shape[1] + max(caps), prefix=inputs.cache)
        kv = {_cache_kwarg(type(self.llm)): cache}
        logits = self.llm(
            inputs_embeds=inputs.embeds, attention_mask=mask, position_ids=inputs.position_ids,
            use_cache=True, logits_to_keep=1, **kv,
        ).logits[:, -1]  # A, V
        while True:
            nxt = logits.argmax(-1) if choose is None else choose(active, logits)  # A
            keep = []
            for j, (row, tok) in enumerate(zip(active.tolist(), nxt.tolist())):
                if tok == self.prompt.eos_id:
                    continue
                tokens[row].append(tok)
                if len(tokens[row]) < caps[row]:
                    keep.append(j)
            if not keep:
                return tokens
            if len(keep) < len(active):  # some rows ended: shrink the batch and its cache
                idx = torch.tensor(keep, device=active.device)
                cache.batch_select_indices(idx)
                active, mask, pos, nxt = active[idx], mask[idx], pos[idx], nxt[idx]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)  # A, L+1
            pos = pos + 1
            logits = self.llm(
                input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[:, None], use_cache=True, **kv,
            ).logits[:, -1]

    # ---------------------------------------------------------------- what trains
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the parameters that train (projector; LoRA and encoder when enabled)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def param_counts(self) -> dict[str, int]:
        count = lambda m, trainable=False: sum(p.numel() for p in m.parameters() if p.requires_grad or not trainable)  # noqa: E731
        return {
            "params/total": count(self),
            "params/trainable": count(self, True),
            "params/projector": count(self.projector),
            "params/encoder": count(self.encoder),
            "params/llm": count(self.llm),
        }

    def use_onednn_linears(self, enabled: bool = True) -> None:
        """On the CPU, run the frozen LLM's linear layers through oneDNN with weights packed once
        (:mod:`harness.models.fast.onednn`); ``enabled=False`` goes back to plain ``F.linear``."""
        use_onednn_linears(self.llm, enabled)

    @property
    def packs_weights(self) -> bool:
        return any("_packed" in m.__dict__ for m in self.llm.modules())

    def compile_for_training(self) -> None:
        """``torch.compile`` the decoder as the training loss calls it (dynamic shapes) and the projector.
        Generation keeps the eager decoder: its growing KV cache would recompile at every length."""
        self.use_onednn_linears(False)  # the compiler picks its own kernels for the decoder's matmuls
        # Kept outside the module tree: a registered compiled copy would duplicate the LLM's state_dict keys.
        self.__dict__["_compiled_decoder"] = torch.compile(self.llm.get_decoder(), dynamic=True)
        self.projector.compile(dynamic=True)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute layer activations in backward (Hugging Face's per-layer checkpointing, non-reentrant)."""
        from transformers import PreTrainedModel

        for m in [self.llm, *(self.encoder.modules() if self.train_encoder else ())]:
            if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.gradient_checkpointing = True
        self.train(self.training)

    def train(self, mode: bool = True) -> "SpeechLLM":
        # Frozen parts stay in eval mode (no dropout) whatever the trainer asks.
        super().train(mode)
        self.encoder.train(mode and self.train_encoder)
        self.llm.train(mode and any(p.requires_grad for p in self.llm.parameters()))
        if self.gradient_checkpointing:
            # HF checkpoints a layer only while that layer is in training mode; flip just the layer's own
            # flag (not its children's), so a frozen LLM keeps its dropout off and still recomputes.
            for m in self.modules():
                if getattr(m, "gradient_checkpointing", False) is True and hasattr(m, "_gradient_checkpointing_func"):
                    m.training = mode
        return self
