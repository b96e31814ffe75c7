"""Where control really goes from a code address: its first instructions, decoded with capstone.

A routine that lies in a signed module can still hand control elsewhere at once: an *argument
gadget* jumps to one of its arguments (``jmp rcx``, ``jmp [rcx+0x10]``, ``push rcx; ret``,
``mov rax, [rcx]; jmp rax``; on x86 ``jmp [esp+4]``, ``mov eax, [esp+4]; jmp eax``,
``push dword [esp+4]; ret``), a *stub* jumps to a fixed address (``jmp rel``, ``jmp [rip+disp]``,
``mov rax, imm; jmp rax``, ``push imm; ret``, ``push lo; mov dword [rsp+4], hi; ret``, the
``push rax; mov rax, imm64; xchg [rsp], rax; ret`` of EBalloon/Common-Registry). Byte patterns
miss the variants; :class:`CodeReader` decodes the instructions with capstone (the disassembler
Volatility's volshell uses) and runs a small abstract interpreter over them: registers and stack
slots hold a constant, an argument of the calling convention, a pointer loaded through an
argument, the return address, or nothing known. Unconditional transfers whose target is known
are followed, a bounded number of times; the first instruction that does real work (a call, a
conditional branch, a store outside the stack, a frame set-up, an instruction it does not
model) ends the walk: the code there runs itself.

Calling conventions (arguments counted from 0): x64 passes the first four in RCX, RDX, R8, R9
(its 32-byte home area is reserved by the caller, not filled); x86 (stdcall or cdecl) on the
stack, ``[esp+4]`` the first on entry. What an argument means is the caller's business: this
module knows no plugin.

Bounds: :data:`MAX_HOPS` transfers, :data:`MAX_INSTRUCTIONS` instructions, :data:`WINDOW` bytes
read at a time. capstone is imported on first use; without it :attr:`CodeReader.available` is
False and nothing is decoded.
"""

import dataclasses
import functools
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple, Union

from volatility3.framework import exceptions

from .addresses import PAGE_SIZE

if TYPE_CHECKING:
    from .pages import PageReader

#: Unconditional transfers followed from one address (a thunk through an import: two).
MAX_HOPS = 4
#: Instructions decoded from one address, all hops together.
MAX_INSTRUCTIONS = 24
#: Bytes read at a time (the longest x86 instruction is 15 bytes).
WINDOW = 64

# What a walk found (Transfer.kind).
NONE = "none"  # the code runs itself: no transfer before real work
ARGUMENT = "argument"  # control goes to an argument (or to a pointer loaded through one)
FIXED = "fixed"  # control goes to a fixed address (Transfer.landing)
UNRESOLVED = "unresolved"  # an unconditional transfer to a target that cannot be known here
UNREADABLE = "unreadable"  # bytes or a pointer the walk needed could not be read (or read as zeros)

# Abstract values: a constant, argument i, the pointer at argument i + displacement, the return
# address; None is "unknown".
_Const = Tuple[str, int]
_Arg = Tuple[str, int]
_Mem = Tuple[str, int, int]
Value = Optional[Union[_Const, _Arg, _Mem, Tuple[str]]]
_RETURN: Tuple[str] = ("ret",)

# General-purpose registers: every name capstone gives, to its family (the 64-bit name) and width.
_FAMILIES = {
    "rax": ("eax", "ax", "al", "ah"), "rbx": ("ebx", "bx", "bl", "bh"), "rcx": ("ecx", "cx", "cl", "ch"),
    "rdx": ("edx", "dx", "dl", "dh"), "rsi": ("esi", "si", "sil"), "rdi": ("edi", "di", "dil"),
    "rbp": ("ebp", "bp", "bpl"), "rsp": ("esp", "sp", "spl"), "rip": ("eip", "ip"),
}
_FAMILIES.update({f"r{n}": (f"r{n}d", f"r{n}w", f"r{n}b") for n in range(8, 16)})
#: x64: the registers that carry arguments 0 to 3.
X64_ARGUMENT_REGISTERS = ("rcx", "rdx", "r8", "r9")
#: x86: arguments on the stack, from [esp+4] on entry; four are modelled.
X86_STACK_ARGUMENTS = 4


def _register_table() -> Dict[str, Tuple[str, int]]:
    table: Dict[str, Tuple[str, int]] = {}
    for family, (dword, word, *low_bytes) in _FAMILIES.items():
        table[family] = (family, 8)
        table[dword] = (family, 4)
        table[word] = (family, 2)
        for name in low_bytes:
            table[name] = (family, 1)
    return table


REGISTERS = _register_table()


@dataclasses.dataclass(frozen=True)
class Transfer:
    """Where control goes from an address.

    ``kind``: :data:`NONE`, :data:`ARGUMENT`, :data:`FIXED`, :data:`UNRESOLVED` or
    :data:`UNREADABLE`. For ARGUMENT, ``argument`` (from 0) and ``through``: None when control
    goes to the argument's value, else the displacement of the pointer read through it
    (``jmp [rcx+0x10]``: 0x10). For FIXED, ``landing``: the last address control reaches (masked
    as the layer addresses it); ``hops`` counts the transfers followed; ``bounded``: the walk
    stopped at :data:`MAX_HOPS` or looped, so control may go further still. ``where``: for
    UNREADABLE, the address that could not be read.
    """

    kind: str
    argument: Optional[int] = None
    through: Optional[int] = None
    landing: Optional[int] = None
    hops: int = 0
    bounded: bool = False
    where: Optional[int] = None
    detail: str = ""

    @property
    def complete(self) -> bool:
        """Every byte and pointer the walk needed was read (a FIXED landing whose own bytes
        cannot be read still says where control goes, not whether it goes further)."""
        return self.kind != UNREADABLE and self.where is None


class _Stop(Exception):
    """The walk ends with this transfer."""

    def __init__(self, transfer: Transfer) -> None:
        super().__init__(transfer.kind)
        self.transfer = transfer


class _State:
    """Registers and stack slots (by offset from the stack pointer on entry) of one walk."""

    def __init__(self, pointer_size: int) -> None:
        self.pointer_size = pointer_size
        self.registers: Dict[str, Value] = {}
        self.stack: Dict[int, Value] = {0: _RETURN}
        self.sp = 0
        if pointer_size == 8:
            for index, register in enumerate(X64_ARGUMENT_REGISTERS):
                self.registers[register] = ("arg", index)
        else:
            for index in range(X86_STACK_ARGUMENTS):
                self.stack[4 * (index + 1)] = ("arg", index)

    def push(self, value: Value) -> None:
        self.sp -= self.pointer_size
        self.stack[self.sp] = value

    def pop(self) -> Value:
        value = self.stack.get(self.sp)
        self.sp += self.pointer_size
        return value


class CodeReader:
    """Decodes code read through a run's page reader (one capstone decoder per run, made on
    first use)."""

    def __init__(self, reader: "PageReader", pointer_size: int) -> None:
        self._reader = reader
        self.pointer_size = pointer_size
        self._mask = reader.mask
        self._word = (1 << (8 * pointer_size)) - 1

    @functools.cached_property
    def _decoder(self):
        """The capstone decoder for this run's mode, with operand details; None without
        capstone (then :attr:`available` is False)."""
        try:
            import capstone
        except ImportError:
            return None
        decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if self.pointer_size == 8 else capstone.CS_MODE_32)
        decoder.detail = True
        return decoder

    @property
    def available(self) -> bool:
        return self._decoder is not None

    # -- reading -------------------------------------------------------------------------

    def _window(self, address: int) -> Tuple[bytes, bool]:
        """Up to :data:`WINDOW` bytes at ``address``, and whether the next page cut them short;
        raises InvalidAddressException when ``address`` itself is not mapped."""
        try:
            return self._reader.read(address, WINDOW), False
        except exceptions.InvalidAddressException:
            return self._reader.read(address, PAGE_SIZE - (address & (PAGE_SIZE - 1))), True

    def _pointer(self, address: int) -> int:
        return int.from_bytes(self._reader.read(address, self.pointer_size), "little")

    def instructions(self, address: int, limit: int) -> Iterator:
        """Up to ``limit`` decoded instructions from ``address`` (capstone ``CsInsn``), read a
        window at a time; stops early at undecodable bytes. Raises InvalidAddressException when
        the bytes of the next instruction are not all mapped."""
        decoder = self._decoder
        position, count = address & self._mask, 0
        while count < limit:
            data, cut = self._window(position)
            decoded = 0
            # capstone stops before an instruction the window cuts: the next window starts there.
            for insn in decoder.disasm(data, position):
                yield insn
                decoded += 1
                count += 1
                position = insn.address + insn.size
                if count >= limit:
                    return
            if decoded == 0:
                if cut:
                    raise exceptions.InvalidAddressException(self._reader.layer.name, position, "instruction cut by an unmapped page")
                return

    # -- following -----------------------------------------------------------------------

    def follow(self, address: int, max_hops: int = MAX_HOPS, max_instructions: int = MAX_INSTRUCTIONS) -> Transfer:
        """Where control goes from ``address`` (see :class:`Transfer`). Never raises for memory
        that is missing; bytes that read as zeros at the start are UNREADABLE (a lost page, no
        evidence), as is a pointer a jump goes through that cannot be read or reads 0."""
        if self._decoder is None:
            return Transfer(UNRESOLVED, detail="capstone is not installed")
        state = _State(self.pointer_size)
        current = address & self._mask
        visited = {current}
        hops, budget = 0, max_instructions
        while True:
            try:
                target, used = self._walk(state, current, budget)
            except _Stop as stop:
                found = stop.transfer
                if found.kind == NONE:
                    return self._ended(hops, current)
                if found.kind == UNREADABLE and hops and found.where == current:
                    # Control lands at ``current``, whose bytes cannot be read.
                    return Transfer(FIXED, landing=current, hops=hops, where=current, detail=found.detail)
                return dataclasses.replace(found, hops=hops, landing=current if hops else None)
            budget -= used
            if target is None:
                return self._ended(hops, current)
            hops += 1
            current = target & self._mask
            if current in visited or hops >= max_hops or budget <= 0:
                return Transfer(FIXED, landing=current, hops=hops, bounded=True)
            visited.add(current)

    @staticmethod
    def _ended(hops: int, current: int) -> Transfer:
        """The code at ``current`` runs itself: no transfer from the start, or a landing."""
        return Transfer(NONE) if hops == 0 else Transfer(FIXED, landing=current, hops=hops)

    def _walk(self, state: _State, address: int, budget: int) -> Tuple[Optional[int], int]:
        """Decode from ``address`` until a transfer to a constant (returned with the number of
        instructions used) or until the code runs itself (None). Raises _Stop for an argument
        transfer, an unresolved one or a read that failed."""
        try:
            first = self._reader.read(address, 16)
        except exceptions.InvalidAddressException:
            first = None
        if first is not None and not any(first):
            raise _Stop(Transfer(UNREADABLE, where=address, detail="reads as zeros"))
        used = 0
        try:
            for insn in self.instructions(address, budget):
                used += 1
                target = self._step(state, insn)
                if target is not None:
                    return target, used
        except exceptions.InvalidAddressException:
            raise _Stop(Transfer(UNREADABLE, where=address, detail="not mapped")) from None
        return None, used

    # -- the interpreter -----------------------------------------------------------------

    def _step(self, state: _State, insn) -> Optional[int]:
        """One instruction: the constant target of a transfer, None to go on; raises _Stop."""
        from capstone import CS_GRP_CALL, CS_GRP_INT, CS_GRP_IRET, CS_GRP_JUMP, CS_GRP_PRIVILEGE, CS_GRP_RET, CsError, x86

        name = insn.id
        operands = insn.operands
        if name in (x86.X86_INS_NOP, x86.X86_INS_ENDBR64, x86.X86_INS_ENDBR32):
            return None
        if name in (x86.X86_INS_INT3, x86.X86_INS_UD2, x86.X86_INS_HLT):
            raise _Stop(Transfer(NONE))
        if name == x86.X86_INS_JMP:
            if insn.bytes[0] == 0xFF and (insn.modrm >> 3) & 7 == 5:
                raise _Stop(Transfer(UNRESOLVED, detail="far jump"))
            return self._to(self._operand(state, insn, operands[0]), insn)
        if name == x86.X86_INS_RET:
            target = state.pop()
            if operands:
                state.sp += operands[0].imm
            if target == _RETURN:
                raise _Stop(Transfer(NONE))
            return self._to(target, insn)
        if name == x86.X86_INS_PUSH and len(operands) == 1 and operands[0].size == self.pointer_size:
            state.push(self._operand(state, insn, operands[0]))
            return None
        if name == x86.X86_INS_POP and len(operands) == 1 and operands[0].type == x86.X86_OP_REG:
            self._set(state, insn, operands[0].reg, state.pop())
            return None
        if name in (x86.X86_INS_MOV, x86.X86_INS_MOVABS) and len(operands) == 2:
            return self._move(state, insn, operands[0], operands[1])
        if name == x86.X86_INS_LEA and operands[0].type == x86.X86_OP_REG:
            address = self._address(state, insn, operands[1])
            self._set(state, insn, operands[0].reg, address if address is not None and address[0] == "const" else None)
            return None
        if name == x86.X86_INS_XCHG and len(operands) == 2:
            return self._exchange(state, insn, operands[0], operands[1])
        if name in (x86.X86_INS_ADD, x86.X86_INS_SUB) and self._is_stack_pointer(insn, operands[0]) and operands[1].type == x86.X86_OP_IMM:
            state.sp += operands[1].imm if name == x86.X86_INS_ADD else -operands[1].imm
            return None
        if any(insn.group(group) for group in (CS_GRP_JUMP, CS_GRP_CALL, CS_GRP_RET, CS_GRP_INT, CS_GRP_IRET, CS_GRP_PRIVILEGE)):
            raise _Stop(Transfer(NONE))  # a call, a conditional branch, a trap: the code runs itself
        # Anything else may go on only while it writes registers other than the stack pointer.
        for operand in operands:
            if operand.type == x86.X86_OP_MEM and operand.access & 2:
                raise _Stop(Transfer(NONE))
        try:
            _read, written = insn.regs_access()
        except CsError:
            raise _Stop(Transfer(NONE)) from None  # an instruction capstone cannot describe: not modelled
        for register in written:
            family = REGISTERS.get(insn.reg_name(register))
            if family is None:
                continue  # flags
            if family[0] == "rsp":
                raise _Stop(Transfer(NONE))
            state.registers[family[0]] = None
        return None

    def _to(self, value: Value, insn) -> int:
        """The constant a transfer goes to; raises _Stop for any other target."""
        if value is None:
            raise _Stop(Transfer(UNRESOLVED, detail=f"{insn.mnemonic} {insn.op_str} at {insn.address:#x}"))
        if value[0] == "const":
            return value[1]
        if value[0] == "arg":
            raise _Stop(Transfer(ARGUMENT, argument=value[1]))
        if value[0] == "mem":
            raise _Stop(Transfer(ARGUMENT, argument=value[1], through=value[2]))
        raise _Stop(Transfer(NONE))  # the return address: the routine returns

    # -- operands ------------------------------------------------------------------------

    def _is_stack_pointer(self, insn, operand) -> bool:
        from capstone import x86

        return operand.type == x86.X86_OP_REG and REGISTERS.get(insn.reg_name(operand.reg), ("",))[0] == "rsp"

    def _register(self, state: _State, insn, register: int) -> Value:
        family, width = REGISTERS.get(insn.reg_name(register), (None, 0))
        if family is None or width != self.pointer_size or family == "rsp":
            return None
        return state.registers.get(family)

    def _set(self, state: _State, insn, register: int, value: Value, zero_extended: bool = False) -> None:
        family, width = REGISTERS.get(insn.reg_name(register), (None, 0))
        if family is None:
            return
        if family == "rsp":
            raise _Stop(Transfer(NONE))
        if width == self.pointer_size:
            state.registers[family] = value
        elif zero_extended and width == 4 and value is not None and value[0] == "const":
            state.registers[family] = ("const", value[1] & 0xFFFF_FFFF)  # x64: a 32-bit write clears the top
        else:
            state.registers[family] = None

    def _address(self, state: _State, insn, operand) -> Optional[Tuple]:
        """A memory operand's address: ("const", a), ("stack", offset), ("argmem", i, disp) or None."""
        from capstone import x86

        memory = operand.mem
        if memory.segment not in (0, x86.X86_REG_DS, x86.X86_REG_SS, x86.X86_REG_CS) or memory.index:
            return None
        displacement = memory.disp
        if memory.base == 0:
            return ("const", displacement & self._word)
        if memory.base == x86.X86_REG_RIP:
            return ("const", (insn.address + insn.size + displacement) & self._word)
        family = REGISTERS.get(insn.reg_name(memory.base), (None, 0))[0]
        if family == "rsp":
            return ("stack", state.sp + displacement)
        value = state.registers.get(family) if family else None
        if value is None:
            return None
        if value[0] == "const":
            return ("const", (value[1] + displacement) & self._word)
        if value[0] == "arg":
            return ("argmem", value[1], displacement)
        return None

    def _load(self, state: _State, address: Optional[Tuple]) -> Value:
        """The pointer-sized value at an address."""
        if address is None:
            return None
        if address[0] == "stack":
            return state.stack.get(address[1])
        if address[0] == "argmem":
            return ("mem", address[1], address[2])
        try:
            value = self._pointer(address[1] & self._mask)
        except exceptions.InvalidAddressException:
            raise _Stop(Transfer(UNREADABLE, where=address[1] & self._mask, detail="pointer not mapped")) from None
        if value == 0:
            raise _Stop(Transfer(UNREADABLE, where=address[1] & self._mask, detail="pointer reads 0"))
        return ("const", value)

    def _operand(self, state: _State, insn, operand) -> Value:
        from capstone import x86

        if operand.type == x86.X86_OP_IMM:
            return ("const", operand.imm & self._word)
        if operand.type == x86.X86_OP_REG:
            return self._register(state, insn, operand.reg)
        if operand.type == x86.X86_OP_MEM and operand.size == self.pointer_size:
            return self._load(state, self._address(state, insn, operand))
        return None

    def _move(self, state: _State, insn, destination, source) -> None:
        from capstone import x86

        if destination.type == x86.X86_OP_REG:
            value = self._operand(state, insn, source) if destination.size == self.pointer_size else None
            if destination.size == 4 and source.type == x86.X86_OP_IMM:
                value = ("const", source.imm & 0xFFFF_FFFF)
            self._set(state, insn, destination.reg, value, zero_extended=True)
            return None
        address = self._address(state, insn, destination)
        if address is None or address[0] != "stack":
            raise _Stop(Transfer(NONE))  # a store outside the stack: real work
        self._store(state, address[1], destination.size, self._operand(state, insn, source) if source.type != x86.X86_OP_IMM
                    else ("const", source.imm & ((1 << (8 * destination.size)) - 1)))
        return None

    def _store(self, state: _State, offset: int, size: int, value: Value) -> None:
        """A store into the stack: a whole slot, or one half of a 64-bit slot holding a constant
        (``mov dword [rsp+4], hi`` completes a 64-bit ``push lo``)."""
        slot = offset - (offset - state.sp) % self.pointer_size
        if size == self.pointer_size and slot == offset:
            state.stack[slot] = value
            return
        current = state.stack.get(slot)
        if size == 4 and self.pointer_size == 8 and current is not None and current[0] == "const" and value is not None and value[0] == "const":
            shift = 8 * (offset - slot)
            kept = current[1] & ~(0xFFFF_FFFF << shift) & self._word
            state.stack[slot] = ("const", kept | (value[1] << shift))
            return
        state.stack[slot] = None

    def _exchange(self, state: _State, insn, first, second) -> None:
        from capstone import x86

        if first.type == x86.X86_OP_REG and second.type == x86.X86_OP_REG:
            a, b = self._register(state, insn, first.reg), self._register(state, insn, second.reg)
            self._set(state, insn, first.reg, b)
            self._set(state, insn, second.reg, a)
            return None
        memory, register = (first, second) if first.type == x86.X86_OP_MEM else (second, first)
        address = self._address(state, insn, memory)
        if address is None or address[0] != "stack" or memory.size != self.pointer_size:
            raise _Stop(Transfer(NONE))
        slot_value = state.stack.get(address[1])
        state.stack[address[1]] = self._register(state, insn, register.reg)
        self._set(state, insn, register.reg, slot_value)
        return None


__all__: List[str] = ["CodeReader", "Transfer", "NONE", "ARGUMENT", "FIXED", "UNRESOLVED", "UNREADABLE"]
