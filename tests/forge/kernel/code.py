"""Code where routines are: function bodies, the int3 padding between them, and (x64) the exception
directory that describes them.

What a disassembler finds at a forged routine is code a compiler could have emitted:

- a **non-leaf function**: on x64 MSVC's prologue (``mov [rsp+8], rbx; push rdi; sub rsp, 20h``:
  a nonvolatile saved in the caller's home area, one pushed, the stack allocated), a body that
  loads through its first argument, tests, calls, and the matching epilogue ending in ``ret``;
  on x86 the hot-patchable ``mov edi, edi; push ebp; mov ebp, esp`` frame, ``ret 0Ch`` (stdcall,
  three arguments);
- a **leaf function**: two stores through the first argument and a return (on x64 it needs no
  exception-directory entry: Microsoft Learn, "x64 exception handling"); where a symbol leaves
  too little room, ``xor eax, eax; ret``;
- ``CC`` (``int3``) **padding** after every function, to a 16-byte boundary and at least
  :data:`PADDING` bytes more where there is room (the runs EBalloon/Common-Registry searches);
- x64: a ``RUNTIME_FUNCTION`` per non-leaf function, whose ``UNWIND_INFO`` describes the prologue
  exactly (``UWOP_ALLOC_SMALL`` 0x20 at 10, ``UWOP_PUSH_NONVOL`` rdi at 6, ``UWOP_SAVE_NONVOL``
  rbx at [rsp+30h] at 5), and for some functions a **cold fragment** placed elsewhere (it calls
  the function and jumps back into it) with a chained ``UNWIND_INFO`` (``UNW_FLAG_CHAININFO``, no
  codes, the parent's ``RUNTIME_FUNCTION`` after them), as MSVC's hot/cold splitting emits.

Some bodies carry an instruction whose bytes, read from inside it, are a gadget: ``jmp rcx``
(``FF E1``) inside ``lea rax, [rcx+0E1FFh]``; ``jmp [rcx+10h]`` (``FF 61 10``) inside ``mov eax,
901061FFh``; on x86 ``jmp [esp+4]`` (``FF 64 24 04``) inside ``mov eax, 42464FFh``, and a dispatch
through the first argument (``mov eax, [esp+4]; jmp [eax+10h]``) behind a branch. Ordinary code
in which gadget hunters find what they need: :attr:`Function.marks` say where.

Not modelled: functions of the real kernel at symbols the forge writes no code for (zeros), unwind
handlers, epilog codes (version 2), indirect (``RUNTIME_FUNCTION_INDIRECT``) entries.
"""

import struct
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

#: int3 bytes kept after a function beyond its 16-byte alignment, where there is room.
PADDING = 0x20
#: Bytes of a RUNTIME_FUNCTION (BeginAddress, EndAddress, UnwindData).
RUNTIME_FUNCTION_SIZE = 12
#: A routine with less room than this gets the smallest leaf body.
NON_LEAF_ROOM = 0x40
INT3 = 0xCC
UNW_FLAG_CHAININFO = 0x4
# x64 unwind operations (Microsoft Learn, "x64 exception handling": UNWIND_CODE).
UWOP_PUSH_NONVOL, UWOP_ALLOC_SMALL, UWOP_SAVE_NONVOL = 0, 2, 4
REG_RBX, REG_RDI = 3, 7

# Kinds of gadget a body may carry (Function.marks key: where its bytes start).
ARGUMENT_GADGET = "argument"  # control to argument 0 (x64 jmp rcx; x86 jmp [esp+4])
THROUGH_GADGET = "through"  # control to the pointer at argument 0 + 0x10
GADGET_DISPLACEMENT = 0x10
RET = "ret"  # the epilogue's return


@dataclass(frozen=True)
class _Template:
    prologue: bytes
    after_gadget: bytes  # the body after the gadget-bearing instruction, up to the epilogue
    epilogue: bytes
    leaf: bytes
    tiny_leaf: bytes
    gadgets: Dict[str, Tuple[bytes, int]]  # kind -> (instruction(s), offset of the gadget in them)


X64 = _Template(
    prologue=bytes.fromhex("48895c2408" "57" "4883ec20" "488bd9" "488bfa"),
    # mov eax, [rbx+10h]; test eax, eax; je +8; mov rcx, rbx; call <the function itself>
    after_gadget=bytes.fromhex("8b4310" "85c0" "7408" "488bcb") + b"\xe8",
    epilogue=bytes.fromhex("488b5c2430" "4883c420" "5f" "c3"),
    leaf=bytes.fromhex("48895110" "4c894118" "c3"),  # mov [rcx+10h], rdx; mov [rcx+18h], r8; ret
    tiny_leaf=bytes.fromhex("33c0c3"),  # xor eax, eax; ret
    gadgets={ARGUMENT_GADGET: (bytes.fromhex("488d81ffe10000"), 3), THROUGH_GADGET: (bytes.fromhex("b8ff611090"), 1)},
)
X86 = _Template(
    prologue=bytes.fromhex("8bff" "55" "8bec" "83ec10" "56" "8b7508"),
    # mov eax, [esi+10h]; test eax, eax; je +6; push esi; call <the function itself>
    after_gadget=bytes.fromhex("8b4610" "85c0" "7406" "56") + b"\xe8",
    epilogue=bytes.fromhex("5e" "8be5" "5d" "c20c00"),
    leaf=bytes.fromhex("8b442404" "c70001000000" "c20c00"),  # mov eax, [esp+4]; mov dword [eax], 1; ret 0Ch
    tiny_leaf=bytes.fromhex("33c0c20c00"),  # xor eax, eax; ret 0Ch
    gadgets={
        ARGUMENT_GADGET: (bytes.fromhex("b8ff642404"), 1),
        # test esi, esi; jnz +7; mov eax, [esp+4]; jmp [eax+10h]
        THROUGH_GADGET: (bytes.fromhex("85f67507" "8b442404" "ff6010"), 4),
    },
)
#: x64: the UNWIND_INFO of the non-leaf prologue (version 1, no flags, prologue of 10 bytes, four
#: code slots: ALLOC_SMALL 0x20 at 10, PUSH_NONVOL rdi at 6, SAVE_NONVOL rbx at 5 (offset 0x30/8)).
NON_LEAF_UNWIND = bytes([1, 10, 4, 0, 10, UWOP_ALLOC_SMALL | (0x20 - 8) // 8 << 4, 6, UWOP_PUSH_NONVOL | REG_RDI << 4,
                         5, UWOP_SAVE_NONVOL | REG_RBX << 4]) + struct.pack("<H", 0x30 // 8)
#: A chained fragment's UNWIND_INFO header: version 1, UNW_FLAG_CHAININFO, no prologue, no codes;
#: the parent's RUNTIME_FUNCTION follows.
CHAINED_UNWIND_HEADER = bytes([1 | UNW_FLAG_CHAININFO << 3, 0, 0, 0])


def _stable(name: str) -> int:
    """A number that depends on the name only (not on Python's hash seed)."""
    return zlib.crc32(name.encode())


@dataclass
class Function:
    """One function as written: where, how large, and where its notable bytes are."""

    name: str
    rva: int
    body: bytes
    leaf: bool
    padding: int  # int3 bytes after the body
    #: offset in the body -> what starts there (RET, a gadget kind)
    marks: Dict[str, int] = field(default_factory=dict)
    fragment_rva: Optional[int] = None
    fragment: bytes = b""

    @property
    def end(self) -> int:
        return self.rva + len(self.body)

    def address_of(self, mark: str) -> int:
        """The RVA of a mark of this function."""
        return self.rva + self.marks[mark]


def _ret_offset(body: bytes) -> int:
    """Where the return that ends ``body`` starts: x86 stdcall's ``ret 0Ch`` is three bytes."""
    return len(body) - (3 if body.endswith(b"\xc2\x0c\x00") else 1)


def _body(template: _Template, rva: int, gadget: Optional[str]) -> Tuple[bytes, Dict[str, int]]:
    """A non-leaf body at ``rva`` whose call goes to its own start."""
    marks: Dict[str, int] = {}
    body = bytearray(template.prologue)
    if gadget is not None:
        instruction, offset = template.gadgets[gadget]
        marks[gadget] = len(body) + offset
        body += instruction
    body += template.after_gadget
    body += struct.pack("<i", rva - (rva + len(body) + 4))  # call rel32 back to the start
    body += template.epilogue
    marks[RET] = _ret_offset(bytes(body))
    return bytes(body), marks


class CodeLayout:
    """The functions of one image and, on x64, their exception directory."""

    def __init__(self, is_64bit: bool) -> None:
        self.is_64bit = is_64bit
        self.template = X64 if is_64bit else X86
        self.functions: Dict[str, Function] = {}

    def add(self, name: str, rva: int, room: int, gadget: Optional[str] = None, leaf: Optional[bool] = None) -> Function:
        """A function at ``rva`` with ``room`` bytes before whatever follows it; leaf or not by
        its name (about one in four is a leaf) unless ``leaf`` says, never a leaf with a gadget."""
        template = self.template
        if leaf is None:
            leaf = gadget is None and _stable(name) % 4 == 0
        body, marks = _body(template, rva, gadget) if not leaf else (template.leaf, {RET: _ret_offset(template.leaf)})
        if len(body) + 1 > room or (not leaf and room < NON_LEAF_ROOM):
            if gadget is not None:
                raise ValueError(f"{name}: {room:#x} bytes are too few for a function carrying a gadget")
            if len(template.leaf) < room:
                body = template.leaf
            elif len(template.tiny_leaf) <= room:
                body = template.tiny_leaf
            else:
                body = b"\xc3"  # a bare return: all a symbol this close to the next leaves room for
            leaf, marks = True, {RET: _ret_offset(body)}
        aligned = (len(body) + 15) & ~15
        padding = max(0, min(room - len(body), aligned - len(body) + PADDING))
        function = Function(name, rva, body, leaf, padding, marks)
        self.functions[name] = function
        return function

    def add_fragment(self, function: Function, rva: int) -> int:
        """A cold fragment of ``function`` at ``rva`` (x64 only): it calls the function and jumps
        back to its epilogue. Returns the fragment's size with its padding."""
        assert self.is_64bit and not function.leaf
        code = bytearray(bytes.fromhex("488bcb") + b"\xe8")
        code += struct.pack("<i", function.rva - (rva + len(code) + 4))
        code += b"\xe9"
        code += struct.pack("<i", function.address_of(RET) - len(X64.epilogue) + 1 - (rva + len(code) + 4))
        function.fragment_rva, function.fragment = rva, bytes(code)
        return (len(code) + 15) & ~15

    def wants_fragment(self, function: Function) -> bool:
        """Some non-leaf functions (by name, about one in three) have a cold fragment."""
        return self.is_64bit and not function.leaf and _stable(function.name) % 3 == 1

    # -- what is written ---------------------------------------------------------------

    def blobs(self) -> List[Tuple[int, bytes]]:
        """(RVA, bytes) of every body with its padding, and every fragment."""
        found = []
        for function in self.functions.values():
            found.append((function.rva, function.body + bytes([INT3]) * function.padding))
            if function.fragment_rva is not None:
                found.append((function.fragment_rva, function.fragment + bytes([INT3]) * (-len(function.fragment) % 16)))
        return found

    def extent(self) -> List[Tuple[int, int]]:
        """(start, end) RVAs of what is written, padding included."""
        return [(rva, rva + len(data)) for rva, data in self.blobs()]

    def table_size(self) -> int:
        """Bytes of the RUNTIME_FUNCTION table (12 bytes an entry; 0 on x86)."""
        return RUNTIME_FUNCTION_SIZE * len(self.runtime_functions())

    def runtime_functions(self) -> List[Tuple[int, int, Optional[int]]]:
        """(BeginAddress, EndAddress, RVA of the parent's entry for a fragment) of every entry,
        sorted: one per non-leaf function, one per fragment."""
        if not self.is_64bit:
            return []
        entries: List[Tuple[int, int, Optional[int]]] = []
        for function in self.functions.values():
            if function.leaf:
                continue
            entries.append((function.rva, function.end, None))
            if function.fragment_rva is not None:
                entries.append((function.fragment_rva, function.fragment_rva + len(function.fragment), function.rva))
        return sorted(entries)

    def exception_directory(self, unwind_rva: int) -> Tuple[bytes, bytes]:
        """(the unwind data, to place at ``unwind_rva``; the RUNTIME_FUNCTION table), x64."""
        entries = self.runtime_functions()
        unwind = bytearray()
        offsets: Dict[int, int] = {}
        parents = {begin: end for begin, end, parent in entries if parent is None}
        for begin, _end, parent in entries:
            offsets[begin] = unwind_rva + len(unwind)
            if parent is None:
                unwind += NON_LEAF_UNWIND
            else:
                unwind += CHAINED_UNWIND_HEADER
                unwind += struct.pack("<III", parent, parents[parent], 0)  # patched below
            unwind += bytes(-len(unwind) % 4)
        # A chained entry names the parent's RUNTIME_FUNCTION, unwind data included.
        for begin, _end, parent in entries:
            if parent is not None:
                struct.pack_into("<I", unwind, offsets[begin] - unwind_rva + 4 + 8, offsets[parent])
        table = b"".join(struct.pack("<III", begin, end, offsets[begin]) for begin, end, _parent in entries)
        return bytes(unwind), table

    # -- what a reader of the table concludes -------------------------------------------

    def position(self, rva: int) -> str:
        """Where ``rva`` lies by this layout's exception directory: ``entry``, ``inside`` (strictly
        inside an entry's range), ``fragment`` (a chained entry's start) or ``uncovered``."""
        for begin, end, parent in self.runtime_functions():
            if begin <= rva < end:
                if rva != begin:
                    return "inside"
                return "fragment" if parent is not None else "entry"
        return "uncovered"


@dataclass(frozen=True)
class ExpectedTransfer:
    """Where a planted routine sends control, as the plant wrote it: to ``argument`` (through the
    pointer at +``through`` when set), or to the fixed ``landing``."""

    argument: Optional[int] = None
    through: Optional[int] = None
    landing: Optional[int] = None


# Stubs that jump to a fixed address (Stub forms).
PUSH_XCHG = "push_xchg"  # x64 EBalloon/Common-Registry: push rax; mov rax, imm64; xchg [rsp], rax; ret
MOV_JMP = "mov_jmp"  # mov rax, imm64; jmp rax (x86: mov eax, imm32; jmp eax)
PUSH_RET = "push_ret"  # x86: push imm32; ret


def stub(is_64bit: bool, target: int, form: str) -> bytes:
    """The bytes of a stub that sends control to ``target``."""
    if is_64bit:
        value = struct.pack("<Q", target & (2**64 - 1))
        if form == PUSH_XCHG:
            return b"\x50\x48\xb8" + value + b"\x48\x87\x04\x24\xc3"
        if form == MOV_JMP:
            return b"\x48\xb8" + value + b"\xff\xe0"
    else:
        value = struct.pack("<I", target & 0xFFFF_FFFF)
        if form == PUSH_RET:
            return b"\x68" + value + b"\xc3"
        if form == MOV_JMP:
            return b"\xb8" + value + b"\xff\xe0"
    raise ValueError(f"no {form} stub on {'x64' if is_64bit else 'x86'}")
