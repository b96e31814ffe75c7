"""Structure views compiled from an ISF: members, nested paths, bit fields, hostile memory."""

import lzma
import json

import pytest

from volatility3.framework import renderers
from volatility3.framework.symbols import intermed
from volatility3_plugins.windows.kernelread import views
from volatility3_plugins.windows.kernelread.pages import PageReader

from tests.unit import memory

# A small kernel-like table: a bit field, an embedded structure, a pointer and an enum.
TABLE = {
    "metadata": {"format": "6.2.0", "producer": {"name": "tests", "version": "1"}},
    "symbols": {},
    "enums": {"_KIND": {"base": "unsigned char", "size": 1, "constants": {"A": 1}}},
    "base_types": {
        "pointer": {"kind": "int", "size": 8, "signed": False, "endian": "little"},
        "unsigned char": {"kind": "char", "size": 1, "signed": False, "endian": "little"},
        "unsigned short": {"kind": "int", "size": 2, "signed": False, "endian": "little"},
        "unsigned long": {"kind": "int", "size": 4, "signed": False, "endian": "little"},
        "long": {"kind": "int", "size": 4, "signed": True, "endian": "little"},
        "void": {"kind": "void", "size": 0, "signed": True, "endian": "little"},
    },
    "user_types": {
        "_STRING": {
            "kind": "struct",
            "size": 16,
            "fields": {
                "Length": {"offset": 0, "type": {"kind": "base", "name": "unsigned short"}},
                "Buffer": {"offset": 8, "type": {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}},
            },
        },
        "_HEADER": {
            "kind": "struct",
            "size": 0x20,
            "fields": {
                "PreviousSize": {"offset": 0, "type": {"kind": "bitfield", "bit_position": 0, "bit_length": 8,
                                                       "type": {"kind": "base", "name": "unsigned long"}}},
                "BlockSize": {"offset": 0, "type": {"kind": "bitfield", "bit_position": 16, "bit_length": 8,
                                                    "type": {"kind": "base", "name": "unsigned long"}}},
                "Delta": {"offset": 4, "type": {"kind": "base", "name": "long"}},
                "Kind": {"offset": 8, "type": {"kind": "enum", "name": "_KIND"}},
                "Flag": {"offset": 9, "type": {"kind": "base", "name": "unsigned char"}},
                "Name": {"offset": 0x10, "type": {"kind": "struct", "name": "_STRING"}},
            },
        },
    },
}
ADDRESS = 0xFFFFF80000300000


@pytest.fixture
def setup(tmp_path):
    context, layer = memory.make_context()
    path = tmp_path / "table.json"
    path.write_text(json.dumps(TABLE))
    table = intermed.IntermediateSymbolTable(context, "test.table", "table", isf_url=path.as_uri())
    context.symbol_space.append(table)
    view = views.StructView.compile(
        context,
        "table!_HEADER",
        ["PreviousSize", "BlockSize", "Delta", "Kind", "Flag", "Name.Length", "Name.Buffer", "Missing"],
        memory.MASK48,
        booleans=["Flag"],
        optional=["Missing"],
    )
    return context, layer, view


def test_members_bit_fields_nested_and_signed(setup):
    context, layer, view = setup
    layer.map(ADDRESS, 0x1000)
    layer.write(ADDRESS, bytes([0x05, 0xAA, 0x0B, 0xCC]) + (-2).to_bytes(4, "little", signed=True) + bytes([1, 7]))
    layer.write(ADDRESS + 0x10, (12).to_bytes(2, "little"))
    layer.ptr(ADDRESS + 0x18, 0xFFFFF80012345678)
    reader = PageReader(layer)
    record = view.read(reader, ADDRESS)
    assert record.PreviousSize == 5 and record.BlockSize == 0x0B
    assert record.Delta == -2
    assert record.Kind == 1
    assert record.Flag is True  # BOOLEAN: any non-zero byte
    assert record["Name.Length"] == 12
    assert record["Name.Buffer"] == 0xFFFFF80012345678 & memory.MASK48  # masked as Volatility renders
    assert not view.has("Missing") and view.offset("Name.Buffer") == 0x18
    assert record.complete and not record.zeroed


def test_missing_member_is_an_error_unless_optional(setup):
    context, _layer, _view = setup
    with pytest.raises(views.ViewError):
        views.StructView.compile(context, "table!_HEADER", ["Nope"], memory.MASK48)
    with pytest.raises(views.ViewError):
        views.StructView.compile(context, "table!_NOPE", ["Delta"], memory.MASK48)
    assert views.member_offset(context, "table!_HEADER", "Name") == 0x10


def test_partly_mapped_structure_keeps_what_can_be_read(setup):
    _context, layer, view = setup
    layer.map(ADDRESS, 0x10)  # only the first 16 bytes exist: Name is unmapped
    layer.write(ADDRESS + 4, (7).to_bytes(4, "little"))
    reader = PageReader(layer)
    record = view.read(reader, ADDRESS)
    assert record.Delta == 7 and not record.complete and not record.zeroed
    assert isinstance(record["Name.Length"], renderers.UnreadableValue)
    assert not record.readable("Name.Buffer") and record.readable("Delta")


def test_zeros_and_absent_memory_are_no_evidence(setup):
    _context, layer, view = setup
    layer.map(ADDRESS, 0x1000)
    reader = PageReader(layer)
    assert view.read(reader, ADDRESS).zeroed
    nothing = view.read(reader, ADDRESS + 0x10000)
    assert nothing.zeroed and not nothing.complete


def test_views_of_a_real_kernel_isf():
    """The kernel's own _POOL_HEADER and _OBJECT_HEADER as the views read them (needs ../shared)."""
    from tests.conftest import require_real_isf
    from tests.volatility_harness import SHARED_ISF_DIR

    path = SHARED_ISF_DIR / "606FF669409B00F7FC8C61A9C1670129-1.json.xz"
    isf = require_real_isf(path if path.exists() else None)
    context, _layer = memory.make_context()
    with lzma.open(isf) as handle:
        data = json.load(handle)
    assert data["user_types"]["_POOL_HEADER"]["size"] == 16
    table = intermed.IntermediateSymbolTable(context, "test.nt", "nt", isf_url=path.as_uri())
    context.symbol_space.append(table)
    pool = views.StructView.compile(context, "nt!_POOL_HEADER", ["BlockSize", "PoolType", "PoolTag"], memory.MASK48)
    header = (0x0203_0004).to_bytes(4, "little") + b"CBRe" + bytes(8)
    record = pool.unpack(header, 0)
    assert (record.BlockSize, record.PoolType, record.PoolTag) == (3, 2, int.from_bytes(b"CBRe", "little"))
    object_header = views.StructView.compile(context, "nt!_OBJECT_HEADER", ["InfoMask", "TypeIndex"], memory.MASK48)
    assert (object_header.offset("TypeIndex"), object_header.offset("InfoMask")) == (0x18, 0x1A)
