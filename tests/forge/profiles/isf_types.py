"""Constructors for ISF type descriptors, for profile tables written by hand.

The x64 profiles are generated from real ISFs; the x86 ones are transcribed from published
structure dumps, and these helpers keep those transcriptions short and in the exact ISF shape
Volatility 3 reads (``kind``/``name``/``subtype``/``count``/``bit_position``/``bit_length``).
"""

from typing import Any, Dict, Optional, Tuple

Desc = Dict[str, Any]

X86_BASE_TYPES: Dict[str, Desc] = {
    "char": {"endian": "little", "kind": "char", "signed": True, "size": 1},
    "double": {"endian": "little", "kind": "float", "signed": True, "size": 8},
    "int": {"endian": "little", "kind": "int", "signed": True, "size": 4},
    "long": {"endian": "little", "kind": "int", "signed": True, "size": 4},
    "long long": {"endian": "little", "kind": "int", "signed": True, "size": 8},
    "pointer": {"endian": "little", "kind": "int", "signed": False, "size": 4},
    "short": {"endian": "little", "kind": "int", "signed": True, "size": 2},
    "unsigned char": {"endian": "little", "kind": "char", "signed": False, "size": 1},
    "unsigned int": {"endian": "little", "kind": "int", "signed": False, "size": 4},
    "unsigned long": {"endian": "little", "kind": "int", "signed": False, "size": 4},
    "unsigned long long": {"endian": "little", "kind": "int", "signed": False, "size": 8},
    "unsigned short": {"endian": "little", "kind": "int", "signed": False, "size": 2},
    "void": {"endian": "little", "kind": "void", "signed": True, "size": 0},
    "wchar": {"endian": "little", "kind": "int", "signed": True, "size": 2},
}

NT_PRODUCT_TYPE: Dict[str, Desc] = {
    "_NT_PRODUCT_TYPE": {"base": "int", "size": 4,
                         "constants": {"NtProductWinNt": 1, "NtProductLanManNt": 2, "NtProductServer": 3}},
}


def base(name: str) -> Desc:
    return {"kind": "base", "name": name}


def struct(name: str) -> Desc:
    return {"kind": "struct", "name": name}


def ptr(target: Optional[str] = None) -> Desc:
    """A pointer to a struct of this table, or ``void *``."""
    return {"kind": "pointer", "subtype": struct(target) if target else base("void")}


def ptr_base(name: str) -> Desc:
    return {"kind": "pointer", "subtype": base(name)}


def array(count: int, subtype: Desc) -> Desc:
    return {"kind": "array", "count": count, "subtype": subtype}


def bits(position: int, length: int, native: str) -> Desc:
    return {"kind": "bitfield", "bit_position": position, "bit_length": length, "type": base(native)}


def enum(name: str) -> Desc:
    return {"kind": "enum", "name": name}


def record(size: int, fields: Dict[str, Tuple[int, Desc]], kind: str = "struct") -> Desc:
    """A user type: ``fields`` maps member name to (offset, type descriptor)."""
    return {"kind": kind, "size": size,
            "fields": {name: {"offset": offset, "type": desc} for name, (offset, desc) in fields.items()}}


def opaque(size: int) -> Desc:
    """A type Volatility insists exists; the forge never writes it, so only its size is kept."""
    return {"kind": "struct", "size": size, "fields": {}}
