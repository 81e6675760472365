"""A trained SLAM-ASR model as a Hugging Face ``transformers`` model: config, weights and loading.

An exported folder (``harness export``) holds ``config.json`` (``model_type: slam_asr``: the run's whole
configuration, so the encoder and LLM references, the prompt, the downsample rate and the decoding
settings), ``model.safetensors`` (only what trained: the projector, and a CTC head or LoRA when the run
had them; the frozen encoder and LLM load from their references), ``modeling_slam_asr.py`` (two lines
that point ``trust_remote_code`` here) and a model card. Either way loads it::

    AutoModel.from_pretrained(folder, trust_remote_code=True)      # in any process with the harness installed
    import harness.run.hf; AutoModel.from_pretrained(folder)    # the registered classes

and ``model.transcribe(["a.flac"])`` gives exactly what the run itself decodes (:func:`harness.run.decode.transcribe_audio`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

MODEL_TYPE = "slam_asr"
WEIGHTS = "model.safetensors"
REMOTE_CODE = "modeling_slam_asr.py"


class SlamAsrConfig(PretrainedConfig):
    """The harness run configuration (``harness_config``: the nested dict of a run's ``config.yaml``)."""

    model_type = MODEL_TYPE

    def __init__(self, harness_config: dict | None = None, **kwargs) -> None:
        self.harness_config = harness_config or {}
        super().__init__(**kwargs)


class SlamAsrModel(PreTrainedModel):
    """Frozen encoder -> trained projector -> frozen LLM, built from the references in its config."""

    config_class = SlamAsrConfig
    base_model_prefix = "slam"

    def __init__(self, config: SlamAsrConfig, speech_llm: torch.nn.Module | None = None) -> None:
        super().__init__(config)
        if speech_llm is None:
            from harness.config import build_config
            from harness.models.build import build_model

            speech_llm = build_model(build_config(config.harness_config))
        self.speech_llm = speech_llm

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config: SlamAsrConfig | None = None, **kwargs):
        """Build the model from the folder's references and load its trained weights (``model.safetensors``).

        Extra ``from_pretrained`` keywords (hub options, ``trust_remote_code``) do not apply: the folder is local."""
        from safetensors.torch import load_file

        folder = Path(pretrained_model_name_or_path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: not an exported model folder (no config.json); make one with `harness export`")
        config = config if isinstance(config, SlamAsrConfig) else SlamAsrConfig.from_pretrained(folder)
        model = cls(config)
        weights = load_file(str(folder / WEIGHTS))
        missing = set(model.speech_llm.trainable_state_dict()) - set(weights)
        if missing:
            raise ValueError(f"{folder / WEIGHTS}: lacks trained weights {sorted(missing)[:3]} (an export of another model?)")
        model.speech_llm.load_state_dict(weights, strict=False)
        return model.eval()

    def transcribe(self, audio: list[str | Path | torch.Tensor]) -> list[str]:
        """Transcripts of audio files (any sample rate or channel count) or 16 kHz mono waveforms, decoded
        with the run's own settings (``decode.*``): for a file of the run's test splits, the run's own transcript."""
        from harness.config import build_config
        from harness.run.decode import transcribe_audio

        return transcribe_audio(self.speech_llm, audio, build_config(self.config.harness_config))


def write_remote_code(folder: Path) -> None:
    """``modeling_slam_asr.py`` and the ``auto_map`` in ``config.json`` that make ``trust_remote_code`` find the classes."""
    (folder / REMOTE_CODE).write_text(
        '"""Loads the exported SLAM-ASR model with the installed harness (pip install slam-harness)."""\n'
        "from harness.run.hf import SlamAsrConfig, SlamAsrModel  # noqa: F401\n")
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data["auto_map"] = {"AutoConfig": "modeling_slam_asr.SlamAsrConfig", "AutoModel": "modeling_slam_asr.SlamAsrModel"}
    path.write_text(json.dumps(data, indent=2) + "\n")


AutoConfig.register(MODEL_TYPE, SlamAsrConfig, exist_ok=True)
AutoModel.register(SlamAsrConfig, SlamAsrModel, exist_ok=True)


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the exported folder of a trained run (``config.yaml`` and its trained weights) to ``out_dir``:
    ``config.json``, ``model.safetensors``, ``modeling_slam_asr.py``. The model card is the caller's
    (:mod:`analysis.model_card` writes it from the run's results)."""
    from safetensors.torch import load_file, save_file

    from harness.config import load_config, to_dict
    from harness.run.checkpoint import trained_weights

    run, out = Path(run_dir), Path(out_dir)
    cfg = load_config(run / "config.yaml")
    weights = trained_weights(run)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise FileExistsError(f"{out}: exists and is not an exported model folder; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    SlamAsrConfig(harness_config=to_dict(cfg)).save_pretrained(out)
    write_remote_code(out)
    tensors = {k: v.contiguous() for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt", "source": "slam-harness run " + run.name})
    return out
