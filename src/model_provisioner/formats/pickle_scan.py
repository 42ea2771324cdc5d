"""What a pickle would import when it is loaded, read without unpickling it (docs/verification.md, "Before an
engine loads a model").

Pickle weights (``pytorch_model.bin``, ``*.pt``, ``*.pth``, ``*.pkl``) run code when ``torch.load`` opens them:
every ``GLOBAL``/``STACK_GLOBAL`` opcode imports a callable the pickle then calls. ``pickletools.genops`` walks the
opcodes (nothing is executed); the module and name of each import are recovered from the strings pushed before it
(memoized ones too). A torch checkpoint is a zip whose ``*/data.pkl`` holds the pickle. Anything outside what a
tensor state dict needs (torch's rebuild functions and storage types, ``collections.OrderedDict``) is reported.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from collections.abc import Iterator
from typing import IO, Any

_STORAGES = ("Float", "Half", "BFloat16", "Double", "Long", "Int", "Short", "Char", "Byte", "Bool", "Untyped")
_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")
#: what torch.save writes for a state dict of tensors
ALLOWED_IMPORTS = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch.serialization._get_layout",
        "torch.device",
        "torch.Size",
        "torch.strided",
        *(
            f"torch.{kind}Storage"
            for kind in (
                "Float",
                "Half",
                "BFloat16",
                "Double",
                "Long",
                "Int",
                "Short",
                "Char",
                "Byte",
                "Bool",
                "Untyped",
            )
        ),
        *(
            f"torch.{dtype}"
            for dtype in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")
        ),
    }
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
#: a data.pkl is small (the tensors are separate zip members); a bare pickle larger than this is not scanned whole
MAX_PICKLE_BYTES = 64 << 20


def is_pickle_weights(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES) and not path.endswith(".index.json")


def pickle_imports(stream: IO[bytes]) -> list[str]:
    """``module.name`` of every import in a pickle stream (or a torch zip checkpoint), in order, each once."""
    head = stream.read(4)
    stream.seek(0)
    if head.startswith(b"PK"):
        with zipfile.ZipFile(stream) as archive:
            found: list[str] = []
            for member in archive.namelist():
                if member.endswith(".pkl"):
                    with archive.open(member) as inner:
                        found += [i for i in _imports(io.BytesIO(inner.read(MAX_PICKLE_BYTES))) if i not in found]
            return found
    return list(dict.fromkeys(_imports(io.BytesIO(stream.read(MAX_PICKLE_BYTES)))))


def disallowed(imports: list[str]) -> list[str]:
    return [name for name in imports if name not in ALLOWED_IMPORTS]


def _imports(data: IO[bytes]) -> Iterator[str]:
    strings: list[str] = []  # the strings pushed, most recent last (STACK_GLOBAL takes the last two)
    memo: dict[int, Any] = {}
    last: Any = None
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                yield f"{module}.{attr}"
            elif name == "STACK_GLOBAL":
                yield f"{strings[-2]}.{strings[-1]}" if len(strings) >= 2 else "<unknown STACK_GLOBAL>"
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"):
                last = str(arg)
                strings.append(last)
            elif name in ("MEMOIZE",):
                memo[len(memo)] = last
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(str(arg))] = last
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                last = memo.get(int(str(arg)))
                if isinstance(last, str):
                    strings.append(last)
            else:
                last = None
    except (ValueError, EOFError) as exc:  # not a pickle, or cut short: refused as unreadable
        yield f"<unreadable pickle: {str(exc)[:80]}>"
