"""Data parallelism for one run over several processes (``torchrun`` or ``accelerate launch``).

Only the projector (and LoRA / a trainable encoder) trains, so instead of wrapping the whole
SpeechLLM in DDP we all-reduce exactly the trainable gradients after each backward pass. Every
rank walks the same global batch order and takes its slice of each global batch; the loss is
token-weighted over the *global* batch (each rank knows every transcript of it), so the summed
gradients equal those of one process training on the whole global batch.

With ``train.parallel=fsdp`` the frozen LLM's weights are also sharded across the ranks (FSDP2),
for LLMs that do not fit one device. Evaluation and decoding are shared by all ranks either way
(each takes a slice of every batch, generation is kept in step), and rank 0 alone writes
checkpoints, logs metrics and writes transcripts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    """Where this rank's collectives run: NCCL reduces only CUDA tensors, gloo CPU ones."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def shard(self, batch: list) -> list:
        """This rank's part of a global batch (round-robin keeps lengths balanced after bucketing)."""
        return batch[self.rank :: self.world] if self.enabled else batch

    def sum(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer). The ranks agree on a
        stop this way: a rank that stopped alone would leave the others waiting in the next all-reduce."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce (sum) the gradients of the trainable parameters, flattened into one buffer."""
        if not self.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def merge(self, part: dict) -> dict:
        """Every rank's dict merged into one, on every rank."""
        if not self.enabled:
            return part
        parts: list[dict] = [{} for _ in range(self.world)]
        dist.all_gather_object(parts, part)
        return {k: v for p in parts for k, v in p.items()}

    def batches(self, order: list[int], batch_size: int) -> list[tuple[list[int], bool]]:
        """This rank's share of ``order`` for evaluation: its round-robin slice of each global batch of
        ``batch_size * world`` items, as ``(indices, real)``. Every rank gets the same number of batches:
        with sharded weights (FSDP) every forward pass needs every rank, so a rank whose slice of the
        last global batch is empty gets a one-item stand-in (``real=False``) whose result is dropped."""
        step = batch_size * self.world
        out = []
        for start in range(0, len(order), step):
            group = order[start : start + step]
            mine = group[self.rank :: self.world]
            out.append((mine, True) if mine else ([group[0]], False))
        return out


def shard_llm(llm: torch.nn.Module) -> None:
    """FSDP2: shard a frozen LLM's decoder layers across the ranks, one unit per layer.

    The decoder is the root unit: the training loss calls it directly, and generation reaches it
    through the LLM's own forward. Token embeddings and the LM head stay whole on every rank: the
    SpeechLLM calls them outside the decoder (to splice the prompt, and to score only labelled
    positions), many LLMs tie them, and for a 7B LLM they are a few percent of the weights.
    """
    from torch.distributed.fsdp import fully_shard

    decoder = llm.get_decoder()
    whole = {*llm.get_input_embeddings().parameters(), *llm.get_output_embeddings().parameters()}
    for layer in decoder.layers:
        fully_shard(layer)
    fully_shard(decoder, ignored_params=whole)  # the final norm (and rotary buffers)


def from_env(device: torch.device) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives (and all_gather_object) use the current device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=str(device))


def shutdown() -> None:
    """Leave the process group this process joined (no-op alone). A process that exits with its gloo
    threads still running can abort in the C++ runtime ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(name: str) -> torch.device:
    """``auto`` under torchrun on GPUs means this rank's own GPU."""
    if name == "auto" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu" if name == "auto" else name)
