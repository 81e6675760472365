"""Building a model from a run config: encoder, projector (seeded), LLM, what the recipe freezes."""
from __future__ import annotations

import torch

from harness.config import RunConfig
from harness.models.ctc import CTCHead
from harness.models.encoders import ENCODERS, SpeechEncoder
from harness.models.projectors import PROJECTORS
from harness.models.sources import check_reference, load_encoder, load_llm
from harness.models.speech_llm import Prompt, SpeechLLM


def validate_references(cfg: RunConfig) -> None:
    """Fail before any run starts when a model or projector name cannot resolve."""
    check_reference(cfg.encoder.name, kind="encoder")
    check_reference(cfg.llm.name, kind="llm")
    PROJECTORS.get(cfg.adapter.projector)


def build_encoder(cfg: RunConfig) -> SpeechEncoder:
    model, feature_extractor = load_encoder(cfg.encoder.name)
    return ENCODERS.get(model.config.model_type).from_model(model, feature_extractor, cfg.encoder)


def build_model(cfg: RunConfig, *, device: torch.device | str = "cpu") -> SpeechLLM:
    """Load encoder and LLM, create the projector (seeded by ``train.seed``), freeze what the recipe freezes."""
    validate_references(cfg)
    encoder = build_encoder(cfg)
    llm, tokenizer = load_llm(cfg.llm.name)
    d_llm = llm.get_input_embeddings().weight.shape[1]

    # Parameters the checkpoint itself keeps frozen (Whisper's sinusoidal positions) stay frozen.
    fixed = [p for p in encoder.parameters() if not p.requires_grad]
    encoder.requires_grad_(cfg.encoder.trainable)
    for p in fixed:
        p.requires_grad_(False)
    llm.requires_grad_(False)
    if cfg.llm.lora.enabled:
        from peft import LoraConfig, inject_adapter_in_model

        lora = cfg.llm.lora
        torch.manual_seed(cfg.train.seed)  # LoRA's A matrices are random: seed them as the projector
        # Injected in place: the LLM stays a plain CausalLM, only lora_A/lora_B weights train.
        llm = inject_adapter_in_model(
            LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules)),
            llm,
        )
        for name, p in llm.named_parameters():
            p.requires_grad_("lora_" in name)

    torch.manual_seed(cfg.train.seed)  # projector initialisation depends on the seed alone
    projector = PROJECTORS.get(cfg.adapter.projector)(encoder.dim, d_llm, cfg.adapter)
    ctc = cfg.adapter.ctc
    head = CTCHead(d_llm, readout=ctc.readout) if ctc.weight > 0 else None
    model = SpeechLLM(
        encoder, projector, llm, Prompt(tokenizer, cfg.llm),
        train_encoder=cfg.encoder.trainable, output_norm=cfg.adapter.output_norm,
        ctc=head, ctc_weight=ctc.weight, ctc_compress=ctc.compress,
    )
    model.full_vocab_logits = cfg.train.full_vocab_logits
    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.use_onednn_linears(torch.device(device).type == "cpu")
    return model.to(device)
