"""Where control goes (kernelread/code.py): every gadget form on x64 and x86, stubs, thunks,
bounded chains, undecodable bytes and memory that is not there, on byte strings in a sparse
layer."""

import struct

import pytest

from volatility3_plugins.windows.kernelread import code
from volatility3_plugins.windows.kernelread.pages import PageReader

from tests.unit import memory

X64 = 0xFFFFF80010001000 & memory.MASK48
X86 = 0x82841000
FAR = 0xFFFFA00012345000 & memory.MASK48  # mapped, holding a function
IAT = 0xFFFFF80010002000 & memory.MASK48


def reader_with(bits: int, regions):
    """A code reader over a layer holding ``regions`` ({address: bytes}, each in a page of its own)."""
    _context, layer = memory.make_context(bits)
    for page in sorted({address & ~0xFFF for address in regions}):
        layer.map(page, 0x1000)
    for address, data in regions.items():
        layer.write(address, data)
    return code.CodeReader(PageReader(layer), 8 if bits == 48 else 4)


def follow64(data: bytes, **regions):
    return reader_with(48, {X64: data, **{int(k, 16): v for k, v in regions.items()}}).follow(X64)


def follow32(data: bytes):
    return reader_with(32, {X86: data}).follow(X86)


FUNCTION_X64 = bytes.fromhex("48895c2408" "57" "4883ec20")  # mov [rsp+8], rbx; push rdi; sub rsp, 20h


@pytest.mark.parametrize("name,data,argument,through", [
    ("jmp rcx", "ffe1", 0, None),
    ("jmp rdx", "ffe2", 1, None),
    ("jmp r8", "41ffe0", 2, None),
    ("jmp r9", "41ffe1", 3, None),
    ("jmp [rcx]", "ff21", 0, 0),
    ("jmp [rcx+10h]", "ff6110", 0, 0x10),
    ("jmp [rcx+100h]", "ffa100010000", 0, 0x100),
    ("jmp [rdx+8]", "ff6208", 1, 8),
    ("push rcx; ret", "51c3", 0, None),
    ("push rdx; ret", "52c3", 1, None),
    ("mov rax, [rcx]; jmp rax", "488b01ffe0", 0, 0),
    ("mov rax, [rcx+18h]; push rax; ret", "488b411850c3", 0, 0x18),
    ("mov rax, rcx; jmp rax", "488bc1ffe0", 0, None),
    ("xchg rax, rcx; jmp rax", "4891ffe0", 0, None),
    ("notrack jmp rcx (CET)", "3effe1", 0, None),
    ("endbr64; jmp rcx", "f30f1efaffe1", 0, None),
    ("nop; xor eax, eax; jmp rcx", "9031c0ffe1", 0, None),
    ("lea rax, [rcx+0E1FFh] read from its third byte", "ffe10000", 0, None),
])
def test_x64_argument_gadgets(name, data, argument, through):
    found = follow64(bytes.fromhex(data))
    assert (found.kind, found.argument, found.through) == (code.ARGUMENT, argument, through), name
    assert found.complete


@pytest.mark.parametrize("name,data,argument,through", [
    ("jmp [esp+4]", "ff642404", 0, None),
    ("jmp [esp+8]", "ff642408", 1, None),
    ("mov eax, [esp+4]; jmp eax", "8b442404ffe0", 0, None),
    ("push dword [esp+4]; ret", "ff742404c3", 0, None),
    ("push dword [esp+0Ch]; ret", "ff74240cc3", 2, None),
    ("mov eax, [esp+4]; jmp [eax+10h]", "8b442404ff6010", 0, 0x10),
    ("mov ecx, [esp+4]; mov eax, [ecx]; jmp eax", "8b4c24048b01ffe0", 0, 0),
])
def test_x86_argument_gadgets(name, data, argument, through):
    found = follow32(bytes.fromhex(data))
    assert (found.kind, found.argument, found.through) == (code.ARGUMENT, argument, through), name


def test_x64_home_area_is_not_an_argument():
    """The caller reserves [rsp+8..28h] but does not fill it: jmp [rsp+8] goes nowhere known."""
    assert follow64(bytes.fromhex("ff642408")).kind == code.UNRESOLVED


TARGET = FAR + 0x40


@pytest.mark.parametrize("name,data", [
    ("EBalloon stub", b"\x50\x48\xb8" + struct.pack("<Q", TARGET | 0xFFFF000000000000) + bytes.fromhex("48870424c3")),
    ("mov rax, imm64; jmp rax", b"\x48\xb8" + struct.pack("<Q", TARGET | 0xFFFF000000000000) + b"\xff\xe0"),
    ("push lo; mov dword [rsp+4], hi; ret",
     b"\x68" + struct.pack("<I", TARGET & 0xFFFFFFFF) + b"\xc7\x44\x24\x04" + struct.pack("<I", 0xFFFFA000) + b"\xc3"),
])
def test_x64_stubs_land_at_their_target(name, data):
    found = follow64(data, **{hex(TARGET): FUNCTION_X64})
    assert (found.kind, found.landing, found.hops, found.complete) == (code.FIXED, TARGET, 1, True), name


def test_x64_push_imm32_sign_extends():
    """push 80001000h pushes 0xFFFFFFFF80001000: the usual 64-bit form needs the mov that follows."""
    found = follow64(bytes.fromhex("6800100080c3"))
    assert found.kind == code.FIXED and found.landing == 0xFFFF80001000 and not found.complete


def test_x86_stubs():
    assert follow32(b"\x68" + struct.pack("<I", 0x9F000000) + b"\xc3").landing == 0x9F000000
    assert follow32(b"\xb8" + struct.pack("<I", 0x9F000010) + b"\xff\xe0").landing == 0x9F000010


def test_thunks_are_followed_to_the_function():
    """An incremental-linking jmp rel32, then an import thunk jmp [rip+IAT]: two hops."""
    thunk = bytes.fromhex("e9fb000000")  # jmp +0x100
    at_100 = b"\xff\x25" + struct.pack("<i", IAT - (X64 + 0x100 + 6))  # jmp [rip+to IAT]
    found = reader_with(48, {X64: thunk, X64 + 0x100: at_100, IAT: struct.pack("<Q", TARGET | 0xFFFF000000000000),
                             TARGET: FUNCTION_X64}).follow(X64)
    assert (found.kind, found.landing, found.hops, found.complete) == (code.FIXED, TARGET, 2, True)


def test_x86_absolute_import_thunk():
    iat = 0x82842000
    found = reader_with(32, {X86: b"\xff\x25" + struct.pack("<I", iat), iat: struct.pack("<I", 0x9F000000),
                             0x9F000000: bytes.fromhex("8bff558bec")}).follow(X86)
    assert (found.kind, found.landing, found.hops) == (code.FIXED, 0x9F000000, 1)


def test_a_thunk_into_a_gadget_is_an_argument_transfer():
    found = reader_with(48, {X64: bytes.fromhex("e9fb000000"), X64 + 0x100: bytes.fromhex("ffe1")}).follow(X64)
    assert (found.kind, found.argument, found.hops) == (code.ARGUMENT, 0, 1)


def test_chains_are_bounded():
    jumps = {X64 + step * 0x100: bytes.fromhex("e9fb000000") for step in range(code.MAX_HOPS + 2)}
    found = reader_with(48, jumps).follow(X64)
    assert found.kind == code.FIXED and found.bounded and found.hops == code.MAX_HOPS
    assert follow64(bytes.fromhex("ebfe")).bounded  # jmp $


@pytest.mark.parametrize("name,data", [
    ("MSVC prologue", FUNCTION_X64),
    ("leaf: two stores and a return", bytes.fromhex("48895110" "4c894118" "c3")),
    ("bare ret", bytes.fromhex("c3")),
    ("call", bytes.fromhex("e800000000ffe1")),
    ("conditional jump first", bytes.fromhex("7402ffe1")),
    ("int3 padding", bytes.fromhex("cccccccc")),
    ("undecodable (salc is invalid in 64-bit mode)", bytes.fromhex("d6d6d6d6")),
    ("a store through an argument", bytes.fromhex("4883ec28" "488911" "ffe1")),
])
def test_code_that_runs_itself(name, data):
    assert follow64(data).kind == code.NONE, name


def test_x86_function_and_leaf():
    assert follow32(bytes.fromhex("8bff558bec83ec10")).kind == code.NONE
    assert follow32(bytes.fromhex("33c0c20c00")).kind == code.NONE
    assert follow32(bytes.fromhex("ff2c24")).kind == code.UNRESOLVED  # a far jump


def test_memory_that_is_not_there():
    _context, layer = memory.make_context()
    reader = code.CodeReader(PageReader(layer), 8)
    assert reader.follow(X64).kind == code.UNREADABLE  # nothing mapped
    layer.map(X64 & ~0xFFF, 0x1000)
    zeros = reader.follow(X64)
    assert zeros.kind == code.UNREADABLE and zeros.detail == "reads as zeros" and not zeros.complete
    # A pointer a jump goes through: unmapped, then zero.
    through = b"\xff\x25" + struct.pack("<i", IAT - (X64 + 6))
    found = reader_with(48, {X64: through}).follow(X64)
    assert found.kind == code.UNREADABLE and found.where == IAT
    found = reader_with(48, {X64: through, IAT: bytes(8)}).follow(X64)
    assert found.kind == code.UNREADABLE and found.detail == "pointer reads 0"
    # A landing that is not mapped: control goes there, its own bytes cannot be read.
    found = follow64(b"\x48\xb8" + struct.pack("<Q", TARGET | 0xFFFF000000000000) + b"\xff\xe0")
    assert (found.kind, found.landing, found.complete) == (code.FIXED, TARGET, False)


def test_an_instruction_cut_by_an_unmapped_page_is_unreadable():
    end = (X64 | 0xFFF) - 1  # the last two bytes of the page: the start of a movabs
    found = reader_with(48, {end: b"\x48\xb8"}).follow(end)
    assert found.kind == code.UNREADABLE


def test_without_capstone_nothing_is_decoded(monkeypatch):
    reader = reader_with(48, {X64: bytes.fromhex("ffe1")})
    monkeypatch.setitem(reader.__dict__, "_decoder", None)
    assert not reader.available and reader.follow(X64).kind == code.UNRESOLVED
