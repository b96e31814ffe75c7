"""The forge's built-in profiles (JSON data) and the tool that writes them."""

import textwrap

import pytest

from tests.forge.profiles.layout import BUILTIN_PROFILES, KernelLayout, load_profile
from tests.forge.tools.extract_profile import extract, load_vtypes, render, vtypes_to_isf

SEGMENT_HEAP_TYPES = ("_EX_POOL_HEAP_MANAGER_STATE", "_RTLP_HP_HEAP_GLOBALS", "_SEGMENT_HEAP", "_HEAP_PAGE_SEGMENT",
                      "_HEAP_LFH_SUBSEGMENT", "_HEAP_VS_SUBSEGMENT", "_HEAP_VS_CHUNK_HEADER_SIZE")
CLASSIC_POOL_TYPES = ("_KPCR", "_KPRCB", "_GENERAL_LOOKASIDE_POOL", "_SLIST_HEADER", "_POOL_DESCRIPTOR")


@pytest.mark.parametrize("profile", sorted(BUILTIN_PROFILES))
def test_every_profile_carries_what_its_pool_allocator_writes(profile):
    layout = KernelLayout.builtin(profile)
    needed = SEGMENT_HEAP_TYPES if layout.uses_segment_heap else CLASSIC_POOL_TYPES
    assert all(layout.has_type(name) for name in needed)
    symbols = ("ExPoolState", "RtlpHpHeapGlobals") if layout.uses_segment_heap else \
        ("KiProcessorBlock", "KeNumberProcessors", "ExpPagedPoolDescriptor", "PoolVector")
    assert all(layout.has_symbol(name) for name in symbols)
    invented = load_profile(BUILTIN_PROFILES[profile])["metadata"]["forge_profile"]["symbols_invented"]
    assert invented == (not layout.is_64bit)


def test_a_variant_profile_shares_its_base_tables():
    variant, base = load_profile("win7_7601_x86_nopae"), load_profile("win7_7601_x86")
    assert variant["user_types"] == base["user_types"] and variant["symbols"] == base["symbols"]
    assert variant["metadata"]["windows"]["pdb"]["database"] == "ntkrnlmp.pdb"
    assert base["metadata"]["windows"]["pdb"]["database"] == "ntkrpamp.pdb"
    assert not KernelLayout.builtin("win7x86nopae").pae and KernelLayout.builtin("win7x86").pae


def test_vtypes_become_isf_descriptors(tmp_path):
    overlay = tmp_path / "overlay_vtypes.py"
    overlay.write_text(textwrap.dedent("""\
        ntkrpamp_types = {
          '_LIST_ENTRY' : [ 0x8, {
            'Flink' : [ 0x0, ['pointer', ['_LIST_ENTRY']]],
            'Blink' : [ 0x4, ['pointer', ['_LIST_ENTRY']]],
        } ],
          '_POOL_HEADER' : [ 0x8, {
            'BlockSize' : [ 0x2, ['BitField', dict(start_bit = 0, end_bit = 9, native_type='unsigned short')]],
            'PoolTag' : [ 0x4, ['unsigned long']],
        } ],
          '_POOL_DESCRIPTOR' : [ 0x1140, {
            'PoolType' : [ 0x0, ['Enumeration', dict(target = 'long', choices = {0: 'NonPagedPool', 1: 'PagedPool'})]],
            'ListHeads' : [ 0x140, ['array', 512, ['_LIST_ENTRY']]],
            'Unknown' : [ 0x4, ['pointer', ['_NOT_DEFINED']]],
        } ],
        }
        """))
    isf = vtypes_to_isf(load_vtypes(overlay))
    fields = isf["user_types"]["_POOL_DESCRIPTOR"]["fields"]
    assert fields["PoolType"]["type"] == {"kind": "enum", "name": "_POOL_TYPE"}
    assert isf["enums"]["_POOL_TYPE"]["constants"] == {"NonPagedPool": 0, "PagedPool": 1}
    assert fields["ListHeads"]["type"] == {"kind": "array", "count": 512, "subtype": {"kind": "struct", "name": "_LIST_ENTRY"}}
    assert fields["Unknown"]["type"] == {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}
    assert isf["user_types"]["_POOL_HEADER"]["fields"]["BlockSize"]["type"] == {
        "kind": "bitfield", "bit_position": 0, "bit_length": 9, "type": {"kind": "base", "name": "unsigned short"}}
    table = extract(isf, {"PoolVector": 0x1000})
    assert set(table["user_types"]) >= {"_LIST_ENTRY", "_POOL_HEADER", "_POOL_DESCRIPTOR"}
    assert render(dict(table, metadata={})).count("\n") > len(table["user_types"])  # one type a line
