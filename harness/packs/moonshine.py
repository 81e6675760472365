"""Moonshine pack: ONNX Runtime (ORT-format, int8) Moonshine base -> a Hugging Face Moonshine folder (float32).

moonshine-cpp 0.1.4 (MIT) ships ``moonshine_cpp/models/base-en/`` with three files:

``encoder_model.ort``, ``decoder_model_merged.ort``
    ONNX Runtime's own model format: a flatbuffer (file identifier ``ORTM``), not ONNX protobuf. We read
    it with a small flatbuffer reader (:func:`harness.packs.ort.read_ort`), so converting needs neither onnxruntime nor the
    ``flatbuffers`` package. The decoder is optimum's "merged" export: one ``If`` node whose two subgraphs
    are the first step (no cache) and the later steps (with cache); the weights live in the outer graph
    and both subgraphs use them.
``tokenizer.bin``
    32000 tokens, each a length byte and that many bytes, in id order: ``<unk> <s> </s>``, the 256
    byte-fallback tokens, then SentencePiece-style pieces (``▁`` marks a space). It has no scores and no
    merges; see :func:`_tokenizer`.

Weights are weight-only int8, dequantised inside the graph by ``Cast(q) -> Mul(scale) -> Add(zero_point)``
with one float32 ``scale`` and one float32 ``zero_point`` per tensor, so ``w = q * scale + zero_point``
(the "zero point" is a float offset added after scaling, not an integer subtracted before it). We evaluate
exactly those nodes in float32 (:func:`_dequantise`; ``DequantizeLinear`` is handled too, anything else on a
quantised tensor is refused).

Every parameter's Hugging Face name comes from the node that consumes it: ``/layers.0/self_attn/q_proj/MatMul``
-> ``model.encoder.layers.0.self_attn.q_proj.weight`` (transposed: ONNX MatMul weights are ``in, out``). The
original model calls two modules differently (``dense`` is ``o_proj``; the decoder's ``up_proj``/``down_proj``
are ``fc1``/``fc2``). Where a tensor also carries a readable name (``layers.0.mlp.fc1.bias``) it must agree
with its consumer's; every tensor must land on exactly one parameter and every parameter must be filled
(the output projection is tied to the token embeddings, as the graph's ``/proj_out/MatMul`` uses them).
The architecture (layers, heads, widths, rotary dimension and base, convolution strides, norms' epsilon)
is read from the graphs and checked against what ``MoonshineForConditionalGeneration`` builds.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from harness.packs.ort import INT8, OrtGraph, OrtNode, read_ort
from harness.packs.registry import PackSpec, register
from harness.packs.store import check_loads, dist_file

if TYPE_CHECKING:
    from transformers import MoonshineConfig, PreTrainedTokenizerFast

DIST = "moonshine-cpp"
MODEL_DIR = "moonshine_cpp/models/base-en/"

# --------------------------------------------------------------------------------------------
# Dequantisation: evaluate the graph's own nodes on its int8 initializers.

_ELEMENTWISE = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}
_FOLDED_OPS = {"Cast", "DequantizeLinear", *_ELEMENTWISE}


def _fold(node: OrtNode, args: list[np.ndarray]) -> np.ndarray:
    if node.op == "Cast":
        if node.attrs.get("to") != 1:
            raise NotImplementedError(f"{node.name}: Cast of a quantised weight to type {node.attrs.get('to')}")
        return args[0].astype(np.float32)
    if node.op == "DequantizeLinear":  # y = (x - zero_point) * scale, per tensor or along `axis`
        if node.attrs.get("block_size", 0):
            raise NotImplementedError(f"{node.name}: blocked DequantizeLinear")
        x, scale = args[0], args[1].astype(np.float32)
        zp = args[2] if len(args) > 2 else np.zeros((), x.dtype)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * x.ndim
            shape[node.attrs.get("axis", 1)] = scale.size
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        return ((x.astype(np.int32) - zp.astype(np.int32)).astype(np.float32) * scale).astype(np.float32)
    out = _ELEMENTWISE[node.op](*args)
    if out.dtype != np.float32:
        raise ValueError(f"{node.name}: dequantised to {out.dtype}, expected float32")
    return out


@dataclass
class Dequantised:
    weights: dict[str, np.ndarray]  # final dequantised tensors (the ones real layers consume), by ONNX name
    sources: dict[str, str]  # each final tensor -> the int8 initializer it came from
    used: set[str]  # every initializer the dequantisation consumed (int8 data, scales, zero points)


def _dequantise(graph: OrtGraph) -> Dequantised:
    """Evaluate, in float32, every node of the main graph that computes on a quantised (int8) initializer.

    Starting from the int8 initializers, a node is evaluated when one of its inputs derives from them and
    all the others are initializers; only casts, DequantizeLinear and elementwise arithmetic are allowed
    on that path, and a quantised tensor that meets a run-time value (MatMulInteger, ...) is refused.
    """
    inits = graph.initializers
    derived: dict[str, tuple[np.ndarray, str]] = {
        n: (a, n) for n, a in inits.items() if a.dtype in INT8
    }
    used: set[str] = set(derived)
    secondary: set[str] = set()
    consumers = _consumers(graph)
    progress = True
    while progress:
        progress = False
        for node in graph.nodes:
            if not any(i in derived for i in node.inputs) or all(o in derived for o in node.outputs):
                continue
            if node.op not in _FOLDED_OPS:
                continue  # a real layer (MatMul, Conv, Gather, ...): consumes a finished weight
            if not all(i in derived or i in inits for i in node.inputs if i):
                raise NotImplementedError(
                    f"{node.name}: {node.op} mixes a quantised weight with a run-time value "
                    "(only weight-only quantisation is supported)"
                )
            source = next(derived[i][1] for i in node.inputs if i in derived)
            args = [derived[i][0] if i in derived else inits[i] for i in node.inputs if i]
            derived[node.outputs[0]] = (_fold(node, args), source)
            used.update(i for i in node.inputs if i in inits)
            secondary.update(i for i in node.inputs[1:] if i in inits)  # scales, zero points
            progress = True
    weights, sources = {}, {}
    for name, (value, source) in derived.items():
        if any(node.op not in _FOLDED_OPS for node, _ in consumers.get(name, ())):
            if value.dtype != np.float32:
                raise NotImplementedError(f"quantised initializer {name!r} is consumed without dequantisation")
            weights[name], sources[name] = value, source
    reached = set(sources.values()) | secondary
    unused = sorted(n for n, a in inits.items() if a.dtype in INT8 and n not in reached)
    if unused:
        raise ValueError(f"quantised initializers that reach no layer: {unused}")
    return Dequantised(weights, sources, used)


def _consumers(graph: OrtGraph) -> dict[str, list[tuple[OrtNode, int]]]:
    out: dict[str, list[tuple[OrtNode, int]]] = defaultdict(list)
    for node in graph.walk():
        for i, name in enumerate(node.inputs):
            if name:
                out[name].append((node, i))
    return out


# --------------------------------------------------------------------------------------------
# Names: ONNX node paths -> Hugging Face parameter names.

_RENAMES = {"dense": "o_proj", "up_proj": "fc1", "down_proj": "fc2"}  # original module names -> HF's
# (op, input index) -> (parameter, is the ONNX tensor the transpose of torch's)
_PARAM_SLOTS = {
    ("MatMul", 1): ("weight", True), ("Conv", 1): ("weight", False), ("Conv", 2): ("bias", False),
    ("Gather", 0): ("weight", False), ("Add", 0): ("bias", False), ("Add", 1): ("bias", False),
    ("Mul", 0): ("weight", False), ("Mul", 1): ("weight", False),
}


def _module_path(node: OrtNode, prefix: str) -> str:
    """``/layers.0/self_attn/dense/MatMul`` -> ``<prefix>layers.0.self_attn.o_proj``."""
    parts = node.name.strip("/").split("/")
    if len(parts) < 2:
        raise ValueError(f"node {node.name!r} ({node.op}) has no module path in its name")
    path = ".".join(_RENAMES.get(p, p) for p in parts[:-1])
    return path if path.startswith(("model.", "proj_out")) else prefix + path


def _readable_name(onnx_name: str, prefix: str) -> str | None:
    """The HF name an initializer's own name spells, if it has one (``onnx::MatMul_1947`` has none)."""
    name = re.sub(r"(_merged_\d+)?(_quantized)?$", "", onnx_name)
    if name.startswith("onnx::") or name.startswith("/") or "." not in name:
        return None
    parts = name.split(".")
    path = ".".join(_RENAMES.get(p, p) for p in parts)
    return path if path.startswith(("model.", "proj_out")) else prefix + path


def _param_uses(tensor: str, consumers, prefix: str) -> set[tuple[str, bool]]:
    """Every (HF parameter, transposed) that a tensor feeds, following plain 2-D transposes."""
    uses = set()
    for node, index in consumers.get(tensor, ()):
        if node.op == "Transpose" and node.attrs.get("perm") in (None, [1, 0]):
            uses |= {(name, not transposed) for name, transposed in _param_uses(node.outputs[0], consumers, prefix)}
            continue
        slot = _PARAM_SLOTS.get((node.op, index))
        if slot is None:
            raise ValueError(f"tensor {tensor!r} feeds input {index} of {node.op} {node.name!r}: not a parameter slot")
        param, transposed = slot
        uses.add((f"{_module_path(node, prefix)}.{param}", transposed))
    return uses


def _is_constant(name: str, value: np.ndarray) -> bool:
    """Graph constants (shapes, axes, epsilons, the rotary frequencies, a branch's empty placeholders), as
    opposed to parameters: torch's exporter names its constants by the node path (``/.../Constant_3_output_0``)."""
    return name.startswith("/") or value.dtype.kind in "iub" or value.size == 0


def _graph_parameters(graph: OrtGraph, prefix: str, tied: dict[str, str]) -> dict[str, torch.Tensor]:
    """Every parameter of one graph under its HF name; each tensor must land on exactly one parameter."""
    deq = _dequantise(graph)
    consumers = _consumers(graph)
    tensors: dict[str, np.ndarray] = dict(deq.weights)
    for name, value in graph.all_initializers():
        if name in deq.used or _is_constant(name, value):
            continue
        if name in tensors:
            raise ValueError(f"initializer {name!r} appears twice")
        tensors[name] = value
    out: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        uses = _param_uses(name, consumers, prefix)
        if not uses:
            raise ValueError(f"tensor {name!r} is used by no layer")
        targets = {hf for hf, _ in uses}
        if len(uses) > 1:  # only a tied pair may share a tensor, and then without any transpose between
            pairs = {frozenset((k, v)) for k, v in tied.items()}
            if frozenset(targets) not in pairs or any(t for _, t in uses) or len(uses) != 2:
                raise ValueError(f"tensor {name!r} feeds several parameters: {sorted(uses)}")
        readable = _readable_name(deq.sources.get(name, name), prefix)
        if readable is not None and readable not in targets:
            raise ValueError(f"tensor {name!r} is named {readable!r} but used as {sorted(targets)}")
        for hf, transposed in sorted(uses):
            if hf in out:
                raise ValueError(f"parameter {hf!r} is filled twice (again from {name!r})")
            t = torch.from_numpy(np.ascontiguousarray(value.T if transposed else value))
            out[hf] = t
    return out


# --------------------------------------------------------------------------------------------
# Architecture: read from the graphs, checked against what transformers builds.


def _node(graph: OrtGraph, name: str) -> OrtNode:
    hits = [n for n in graph.walk() if n.name == name]
    if not hits:
        raise ValueError(f"expected a node named {name!r}")
    return hits[0]


def _producer(graph: OrtGraph, tensor: str) -> OrtNode:
    for node in graph.walk():
        if tensor in node.outputs:
            return node
    raise ValueError(f"no node produces {tensor!r}")


def _constant(graph: OrtGraph, name: str) -> np.ndarray:
    for g in (graph, *graph.subgraphs()):
        if name in g.initializers:
            return g.initializers[name]
    raise ValueError(f"expected a constant {name!r}")


def _heads(graph: OrtGraph, projection: str) -> tuple[int, int]:
    """(heads, head_dim) of the Reshape that splits a projection's output into heads: ``B, T, H, D``."""
    out = _node(graph, projection).outputs[0]
    reshape = next((n for n in graph.walk() if n.op == "Reshape" and n.inputs[0] == out), None)
    if reshape is None:
        raise ValueError(f"{projection}: no Reshape splits its output into heads")
    concat = _producer(graph, reshape.inputs[1])
    if concat.op != "Concat":
        raise ValueError(f"{reshape.name}: expected its shape from a Concat, got {concat.op}")
    heads, head_dim = (int(_constant(graph, i).reshape(-1)[0]) for i in concat.inputs[-2:])
    return heads, head_dim


def _layer_count(params: dict[str, torch.Tensor], prefix: str) -> int:
    ids = {int(m.group(1)) for k in params if (m := re.match(re.escape(prefix) + r"layers\.(\d+)\.", k))}
    if ids != set(range(len(ids))):
        raise ValueError(f"{prefix}layers: non-contiguous layer indices {sorted(ids)}")
    return len(ids)


def _rotary(graph: OrtGraph) -> tuple[np.ndarray, float]:
    """The rotary inverse frequencies (the constant fed to the rotary MatMul) and their base."""
    matmul = next((n for n in graph.walk() if n.op == "MatMul" and n.name.endswith("rotary_emb/MatMul")), None)
    if matmul is None:
        raise ValueError("no rotary embedding (a .../rotary_emb/MatMul node) in the graph")
    inv_freq = _constant(graph, matmul.inputs[0]).reshape(-1).astype(np.float64)
    if inv_freq.size < 2:
        raise ValueError(f"rotary embedding with {inv_freq.size} frequencies")
    # inv_freq[i] = theta ** (-i / half): a least-squares fit of log(theta), rounded when it is an integer
    exponents = np.arange(inv_freq.size) / inv_freq.size
    theta = float(np.exp(-np.dot(exponents, np.log(inv_freq)) / np.dot(exponents, exponents)))
    if abs(theta - round(theta)) < 1e-4 * theta:
        theta = float(round(theta))
    return inv_freq, theta


def _config(enc: OrtGraph, dec: OrtGraph, enc_p: dict, dec_p: dict, vocab_size: int) -> MoonshineConfig:
    from transformers import MoonshineConfig

    hidden = enc_p["model.encoder.conv1.weight"].shape[0]
    enc_heads, head_dim = _heads(enc, "/layers.0/self_attn/q_proj/MatMul")
    dec_heads, dec_head_dim = _heads(dec, "/model/decoder/layers.0/self_attn/q_proj/MatMul")
    enc_kv, _ = _heads(enc, "/layers.0/self_attn/k_proj/MatMul")
    dec_kv, _ = _heads(dec, "/model/decoder/layers.0/self_attn/k_proj/MatMul")
    if head_dim != dec_head_dim or enc_heads * head_dim != hidden:
        raise ValueError(
            f"head sizes: encoder {enc_heads}x{head_dim}, decoder {dec_heads}x{dec_head_dim}, width {hidden}")
    inter = enc_p["model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    if dec_p["model.decoder.layers.0.mlp.fc1.weight"].shape[0] != 2 * inter:
        raise ValueError("decoder's gated MLP is not twice the encoder's intermediate size")
    inv_freq, theta = _rotary(enc)
    inv_dec, theta_dec = _rotary(dec)
    if not np.allclose(inv_freq, inv_dec) or theta != theta_dec:
        raise ValueError("encoder and decoder use different rotary embeddings")
    rotary_dim = 2 * inv_freq.size
    factor = rotary_dim / head_dim
    if int(head_dim * factor) != rotary_dim:  # transformers takes int(head_dim * factor)
        factor = (rotary_dim + 1e-6) / head_dim
    ops = {side: {n.op for n in g.walk()} for side, g in (("enc", enc), ("dec", dec))}
    if "Erf" not in ops["enc"] or "Sigmoid" not in ops["dec"]:
        raise ValueError("expected an erf GELU in the encoder and a SiLU-gated MLP in the decoder")
    return MoonshineConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=inter,
        encoder_num_hidden_layers=_layer_count(enc_p, "model.encoder."),
        decoder_num_hidden_layers=_layer_count(dec_p, "model.decoder."),
        encoder_num_attention_heads=enc_heads,
        decoder_num_attention_heads=dec_heads,
        encoder_num_key_value_heads=enc_kv,
        decoder_num_key_value_heads=dec_kv,
        encoder_hidden_act="gelu",
        decoder_hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": factor},
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        pad_token_id=None,
        tie_word_embeddings=True,
    )


def _check_architecture(model, enc: OrtGraph, dec: OrtGraph) -> None:
    """What transformers hard-codes (convolutions, group norm, epsilons) must match the graphs."""
    encoder = model.model.encoder
    for name in ("conv1", "conv2", "conv3"):
        node, conv = _node(enc, f"/{name}/Conv"), getattr(encoder, name)
        got = (node.attrs.get("kernel_shape"), node.attrs.get("strides", [1]), node.attrs.get("pads", [0, 0]),
               node.attrs.get("dilations", [1]), node.attrs.get("group", 1))
        want = (list(conv.kernel_size), list(conv.stride), [conv.padding[0]] * 2, list(conv.dilation), conv.groups)
        if got != want:
            raise ValueError(f"{name}: the graph's convolution {got} is not transformers' {want}")
    norm = _node(enc, "/groupnorm/InstanceNormalization")
    groups = _constant(enc, _node(enc, "/groupnorm/Reshape").inputs[1]).tolist()
    scale, shift = (_constant(enc, i) for i in norm.inputs[1:3])
    gn = encoder.groupnorm
    if groups[1] != gn.num_groups or not (np.all(scale == 1) and np.all(shift == 0)):
        raise ValueError(
            f"group norm: {groups[1]} groups (transformers: {gn.num_groups}) or a non-identity inner affine")
    if not math.isclose(norm.attrs.get("epsilon", 1e-5), gn.eps, rel_tol=1e-6):
        raise ValueError(f"group norm epsilon {norm.attrs.get('epsilon')} != {gn.eps}")
    for graph, module in ((enc, encoder), (dec, model.model.decoder)):
        # each layer norm adds its epsilon (a scalar constant) to the variance: ".../input_layernorm/Add"
        adds = [n for n in graph.walk() if n.op == "Add" and re.search(r"(layernorm|layer_norm|/norm)/Add$", n.name)]
        eps = {float(_constant(graph, i)) for n in adds for i in n.inputs if i.startswith("/") and "Constant" in i}
        torch_eps = {m.eps for m in module.modules() if isinstance(m, torch.nn.LayerNorm)}
        if not eps or any(not math.isclose(e, t, rel_tol=1e-5) for e in eps for t in torch_eps):
            raise ValueError(f"layer norm epsilon: graph {sorted(eps)}, transformers {sorted(torch_eps)}")
    inv_freq, _ = _rotary(enc)
    if not np.allclose(encoder.rotary_emb.inv_freq.double().numpy(), inv_freq, rtol=1e-6):
        raise ValueError("rotary frequencies differ from the graph's")


# --------------------------------------------------------------------------------------------
# tokenizer.bin -> a fast BPE tokenizer.

_SPECIALS = ("<unk>", "<s>", "</s>")


def read_tokenizer_bin(data: bytes) -> list[bytes]:
    """The tokens of tokenizer.bin in id order: each is one length byte followed by that many bytes."""
    tokens, i = [], 0
    while i < len(data):
        n = data[i]
        if n >= 0x80:
            raise ValueError(f"tokenizer.bin: a length byte of {n} at offset {i} (longer tokens are not supported)")
        if i + 1 + n > len(data):
            raise ValueError("tokenizer.bin is truncated")
        tokens.append(data[i + 1:i + 1 + n])
        i += 1 + n
    return tokens


def _tokenizer(data: bytes, vocab_size: int) -> PreTrainedTokenizerFast:
    """A BPE tokenizer with byte fallback from tokenizer.bin, padded with unused tokens to the model's vocabulary.

    The file gives only the pieces, in id order. SentencePiece BPE merges the adjacent pair whose merged
    piece scores highest, and its pieces are stored best first, so the merges are every split of a piece
    into two pieces, ranked by the merged piece's id. Ids 3..258 are the 256 bytes (written ``<0xNN>``, the
    name the byte-fallback decoder expects). The model's vocabulary (32768) is larger than the file's
    (32000): the rest become special ``<unused_N>`` tokens so that ids line up.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = read_tokenizer_bin(data)
    if tuple(t.decode() for t in tokens[:3]) != _SPECIALS:
        raise ValueError(f"tokenizer.bin: expected {_SPECIALS} first, got {tokens[:3]}")
    if tokens[3:259] != [bytes([b]) for b in range(256)]:
        raise ValueError("tokenizer.bin: ids 3..258 are not the 256 bytes in order")
    if len(tokens) > vocab_size:
        raise ValueError(f"tokenizer.bin has {len(tokens)} tokens, the model only {vocab_size}")
    pieces = [*_SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), *(t.decode("utf-8") for t in tokens[259:])]
    vocab = {p: i for i, p in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise ValueError("tokenizer.bin has duplicate tokens")
    merges = []
    for merged in pieces[259:]:
        splits = [(vocab[merged[:k]], vocab[merged[k:]]) for k in range(1, len(merged))
                  if vocab.get(merged[:k], 0) >= 259 and vocab.get(merged[k:], 0) >= 259]
        merges += [(vocab[merged], a, b) for a, b in splits]
    merges.sort()
    bpe = models.BPE(vocab=vocab, merges=[(pieces[a], pieces[b]) for _, a, b in merges],
                     unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tk.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    tk.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in _SPECIALS])
    unused = [AddedToken(f"<unused_{i}>", special=True, normalized=False) for i in range(vocab_size - len(pieces))]
    tk.add_special_tokens(unused)
    if tk.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise ValueError(f"tokenizer has {tk.get_vocab_size()} tokens, the model {vocab_size}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>",
    )


# --------------------------------------------------------------------------------------------
# The conversion.


def _convert_moonshine(encoder_ort: bytes, decoder_ort: bytes, tokenizer_bin: bytes, out: Path) -> None:
    """Write an HF Moonshine folder (model, generation config, processor) from the three pack files."""
    from transformers import (
        GenerationConfig,
        MoonshineForConditionalGeneration,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Processor,
    )

    tied = dict(MoonshineForConditionalGeneration._tied_weights_keys)
    enc, dec = read_ort(encoder_ort), read_ort(decoder_ort)
    if enc.inputs != ["input_values"] or dec.inputs[:2] != ["input_ids", "encoder_hidden_states"]:
        raise ValueError(f"not a Moonshine encoder/decoder pair (inputs {enc.inputs}, {dec.inputs[:2]})")
    enc_p = _graph_parameters(enc, "model.encoder.", tied)
    dec_p = _graph_parameters(dec, "", tied)
    if not all(k.startswith("model.encoder.") for k in enc_p) or any(k.startswith("model.encoder.") for k in dec_p):
        raise ValueError("encoder and decoder parameters are mixed up")
    params = {**enc_p, **dec_p}
    vocab_size = params["model.decoder.embed_tokens.weight"].shape[0]

    config = _config(enc, dec, enc_p, dec_p, vocab_size)
    model = MoonshineForConditionalGeneration(config).eval()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    if missing or unexpected:
        raise ValueError(f"Moonshine conversion: missing {missing}, unexpected {unexpected}")
    for name, t in list(params.items()):
        want = tuple(expected[name].shape)
        if tuple(t.shape) != want:
            if t.numel() == math.prod(want) and tuple(s for s in t.shape if s != 1) == want:
                params[name] = t.reshape(want)  # a norm's [C, 1] broadcast shape in the graph
            else:
                raise ValueError(f"{name}: graph shape {tuple(t.shape)}, transformers {want}")
    if not torch.equal(params["proj_out.weight"], params["model.decoder.embed_tokens.weight"]):
        raise ValueError("the output projection is not the token embeddings")
    model.load_state_dict(params, strict=True)
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise ValueError("Moonshine conversion: output projection is not tied to the token embeddings")
    _check_architecture(model, enc, dec)

    tok = _tokenizer(tokenizer_bin, vocab_size)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.eos_token_id,
        max_length=config.max_position_embeddings,
    )
    model.save_pretrained(out)
    fe = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False, return_attention_mask=True,
    )
    Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(out)
    check_loads(MoonshineForConditionalGeneration, out)


def pack_files() -> tuple[Path, Path, Path]:
    """The installed pack's encoder, decoder and tokenizer files."""
    return (dist_file(DIST, MODEL_DIR + "encoder_model.ort"), dist_file(DIST, MODEL_DIR + "decoder_model_merged.ort"),
            dist_file(DIST, MODEL_DIR + "tokenizer.bin"))


def _convert(spec: PackSpec, out: Path) -> None:
    encoder, decoder, tokenizer = pack_files()
    _convert_moonshine(encoder.read_bytes(), decoder.read_bytes(), tokenizer.read_bytes(), out)


# --------------------------------------------------------------------------------------------
# Proof: transcribe real speech with the converted model's own decoder.

TOKENS_PER_SECOND = 6.5  # generation cap: Moonshine's own rule against runaway repetition on short audio


def transcribe(folder: Path, paths: list[Path], *, batch_size: int = 1) -> list[str]:
    """Greedy transcripts of 16 kHz audio files with a converted Moonshine folder's own decoder.

    One utterance at a time by default: transformers' Moonshine encoder computes its group norm over the
    padding of a batch and subsamples the attention mask approximately, so a padded batch does not give
    each utterance exactly its own transcript (the harness's encoder family does this exactly).
    """
    import soundfile as sf
    from transformers import AutoProcessor, MoonshineForConditionalGeneration

    processor = AutoProcessor.from_pretrained(folder)
    model = MoonshineForConditionalGeneration.from_pretrained(folder).eval()
    texts: list[str] = []
    for i in range(0, len(paths), batch_size):
        audio = []
        for p in paths[i:i + batch_size]:
            samples, rate = sf.read(p, dtype="float32")
            if rate != 16000:
                raise ValueError(f"{p}: expected 16 kHz audio, got {rate} Hz")
            audio.append(samples)
        inputs = processor(audio, sampling_rate=16000, return_tensors="pt", padding=True)
        # the decoder start token plus at most `cap` tokens (max_length, which the generation config also sets)
        cap = math.ceil(max(len(a) for a in audio) / 16000 * TOKENS_PER_SECOND) + 4
        with torch.inference_mode():
            ids = model.generate(**inputs, do_sample=False, num_beams=1, max_length=cap + 1)
        texts += processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [t.strip() for t in texts]


register(
    PackSpec(
        name="moonshine-base",
        kind="encoder",
        pip_requirements=("moonshine-cpp==0.1.4",),
        description="Useful Sensors Moonshine base (61M, English), ONNX Runtime int8 (ORT format) -> HF float32",
    ),
    _convert,
    transcribe=transcribe,
)
