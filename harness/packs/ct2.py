"""A reader of CTranslate2 ``model.bin`` files (a flat list of named tensors)."""
from __future__ import annotations

import struct
from dataclasses import dataclass

import torch





_CT2_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)


@dataclass
class CT2Model:
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]  # alias -> name of the variable holding the data

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.variables[self.aliases.get(name, name)]


def read_ct2(data: bytes | bytearray) -> CT2Model:
    """Parse the bytes of a CTranslate2 model.bin (the tensors share memory with `data`)."""
    buf = data if isinstance(data, bytearray) else bytearray(data)  # torch.frombuffer wants writable
    pos = 0

    def need(n: int) -> None:
        if pos + n > len(buf):
            raise ValueError(f"CTranslate2 file truncated: {n} bytes needed at offset {pos}, size {len(buf)}")

    def take(fmt: str) -> int:
        nonlocal pos
        need(struct.calcsize("<" + fmt))
        (value,) = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        need(n)
        s = bytes(buf[pos:pos + n - 1]).decode("utf-8")  # n counts the trailing NUL
        pos += n
        return s

    version = take("I")
    if not 4 <= version <= 6:
        raise ValueError(f"unsupported CTranslate2 binary version {version} (this reader handles 4..6)")
    spec, revision = string(), take("I")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype_id, n_bytes = take("B"), take("I")
        if dtype_id >= len(_CT2_DTYPES):
            raise ValueError(f"{name}: unknown CTranslate2 dtype id {dtype_id}")
        dtype = _CT2_DTYPES[dtype_id]
        count = n_bytes // dtype.itemsize
        need(n_bytes)
        tensor = torch.frombuffer(buf, dtype=dtype, count=count, offset=pos) if count else torch.empty(0, dtype=dtype)
        variables[name] = tensor.reshape(shape)
        pos += n_bytes
    aliases = {}
    for _ in range(take("I")):
        alias = string()
        aliases[alias] = string()
    if pos != len(buf):
        raise ValueError(f"trailing bytes in CTranslate2 file: parsed {pos} of {len(buf)}")
    return CT2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)
