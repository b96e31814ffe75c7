"""The bare machine of a forged image: paging, fixed kernel pages, pools and typed writes.

Placement follows what Volatility's automagic looks for on a real Windows machine.

x64:
- the DTB in the low physical range its self-referential-pointer scan covers (Windows 10 puts it
  near 0x1AD000 with a randomised self-map index; Windows 7 uses the fixed index 0x1ED);
- ``KUSER_SHARED_DATA`` at 0xFFFFF78000000000 with the NT version in it;
- the processor start block ("low stub") in the first physical megabyte, whose CR3 and
  long-mode target lead Volatility's PDB scanner to the kernel image.

x86 (PAE or not):
- the DTB at 0x185000, inside the range the fixed-index scan covers (PAE: PDPT there, the four
  page directories in the four pages after it, as on a booted Windows 7);
- ``KUSER_SHARED_DATA`` at 0xFFDF0000, whose NtMajorVersion Volatility checks;
- no low stub: the loader maps the kernel at a fixed offset, virtual = physical + 0x80000000,
  which is how Volatility's PDB scanner finds a 32-bit kernel (``method_fixed_mapping``).
"""

import struct
from typing import Dict, Optional, Sequence, Tuple

from .layout import KernelLayout, pack_pointer
from .memory import PAGE_SIZE, AddressSpace, KernelAddressSpace, PaeAddressSpace, PhysicalMemory, X86AddressSpace, canonical
from .pool import POOL_TYPE_NONPAGED, POOL_TYPE_PAGED, PoolAllocator, PoolBlock

KUSER_SHARED_DATA = 0xFFFF_F780_0000_0000
KUSER_SHARED_DATA_X86 = 0xFFDF_0000
X86_KERNEL_MAPPING = 0x8000_0000  # x86 loader: kernel virtual address = physical + 2 GiB
LOW_STUB_PHYSICAL = 0x1000
LOW_STUB_SIGNATURE = 0x0000_0001_0006_00E9  # JMP opcode, its offset and CompletionFlag
LOW_STUB_LM_TARGET = 0x70
LOW_STUB_CR3 = 0xA0


class AddressPlan:
    """Virtual and physical placement for one Windows generation."""

    def __init__(self, layout: KernelLayout, memory_size: int = 0) -> None:
        # Physical frame of the kernel image when the loader maps it at a fixed offset (x86).
        self.kernel_physical: Optional[int] = None
        if not layout.is_64bit:
            self.dtb = 0x185000
            self.self_ref_index = 3 if layout.pae else 0x300
            self.kernel_base = 0x8284_0000
            self.kernel_physical = self.kernel_base - X86_KERNEL_MAPPING
            self.nonpaged_pool = 0x8440_0000
            self.paged_pool = 0x8A20_0000
            self.kuser_shared_data = KUSER_SHARED_DATA_X86
            self.unmapped = 0x9F0D_E000
            return
        self.kuser_shared_data = KUSER_SHARED_DATA
        if layout.nt_version >= (10, 0):
            self.dtb = 0x1AD000
            self.self_ref_index = 0x1B2
            self.kernel_base = 0xFFFF_F803_1240_0000
            self.nonpaged_pool = 0xFFFF_9A80_0000_0000
            self.paged_pool = 0xFFFF_A001_0000_0000
        else:
            self.dtb = 0x187000
            self.self_ref_index = 0x1ED
            self.kernel_base = 0xFFFF_F800_0260_0000
            self.nonpaged_pool = 0xFFFF_FA80_0000_0000
            self.paged_pool = 0xFFFF_F8A0_0000_0000
        # Addresses that never get a page: targets for planted dangling pointers.
        self.unmapped = 0xFFFF_9F00_DEAD_0000 if layout.nt_version >= (10, 0) else 0xFFFF_FA00_DEAD_0000


class Machine:
    """Physical memory, one kernel address space, and typed writers over it."""

    def __init__(self, layout: KernelLayout, memory_size: int = 0) -> None:
        self.layout = layout
        self.plan = AddressPlan(layout)
        self.physical = PhysicalMemory(minimum_size=memory_size)
        self.space: KernelAddressSpace
        if layout.is_64bit:
            self.space = AddressSpace(self.physical, self.plan.dtb, self.plan.self_ref_index)
        elif layout.pae:
            self.space = PaeAddressSpace(self.physical, self.plan.dtb)
        else:
            self.space = X86AddressSpace(self.physical, self.plan.dtb)
        self.nonpaged = PoolAllocator(self.space, layout, self.plan.nonpaged_pool, POOL_TYPE_NONPAGED)
        self.paged = PoolAllocator(self.space, layout, self.plan.paged_pool, POOL_TYPE_PAGED)
        self._map_shared_user_data()

    # -- fixed pages ---------------------------------------------------------------------

    def _map_shared_user_data(self) -> None:
        kuser = self.plan.kuser_shared_data
        self.space.map_page(kuser, executable=False)
        major, minor = self.layout.nt_version
        values: Dict[str, int] = {"NtMajorVersion": major, "NtMinorVersion": minor, "NtProductType": 1, "ProductTypeIsValid": 1}
        if self.layout.has_field("_KUSER_SHARED_DATA", "NtBuildNumber") and self.layout.build:
            values["NtBuildNumber"] = self.layout.build
        self.write_struct(kuser, "_KUSER_SHARED_DATA", values)
        root = "C:\\Windows".encode("utf-16-le")
        self.space.write(kuser + self.layout.offset_of("_KUSER_SHARED_DATA", "NtSystemRoot"), root)

    def write_low_stub(self, long_mode_target: int) -> None:
        """The x64 processor start block; 32-bit Windows has none (its kernel is fixed-mapped)."""
        if not self.layout.is_64bit:
            return
        stub = bytearray(PAGE_SIZE)
        struct.pack_into("<Q", stub, 0, LOW_STUB_SIGNATURE)
        struct.pack_into("<Q", stub, LOW_STUB_LM_TARGET, canonical(long_mode_target))
        struct.pack_into("<Q", stub, LOW_STUB_CR3, self.plan.dtb)
        self.physical.write(LOW_STUB_PHYSICAL, bytes(stub))

    # -- typed writes --------------------------------------------------------------------

    def write_struct(self, address: int, type_name: str, values: Dict[str, int], size: Optional[int] = None) -> None:
        """Write a whole structure: the named members set, all others zero."""
        self.space.write(address, self.layout.pack(type_name, values, size))

    def write_fields(self, address: int, type_name: str, values: Dict[str, int]) -> None:
        """Change some members of a structure already in memory, leaving the rest alone."""
        for path, value in values.items():
            spec = self.layout.field(type_name, path)
            buffer = bytearray(self.space.read(address + spec.offset, spec.size))
            spec.encode_into(buffer, -spec.offset, value)
            self.space.write(address + spec.offset, bytes(buffer))

    def write_pointer(self, address: int, value: int) -> None:
        self.space.write(address, pack_pointer(canonical(value) if value else 0, self.layout.pointer_size))

    def read_pointer(self, address: int) -> int:
        return int.from_bytes(self.space.read(address, self.layout.pointer_size), "little")

    def write_list_entry(self, address: int, flink: int, blink: int) -> None:
        self.write_pointer(address, flink)
        self.write_pointer(address + self.layout.pointer_size, blink)

    def write_list(self, head: int, entries: Sequence[Tuple[int, bool]]) -> None:
        """Link the entries marked True behind ``head``, in order, as a circular LIST_ENTRY list.

        An entry marked False is left out the way a rootkit unlinks one: it keeps stale
        Flink/Blink pointing at the neighbours it had, and no list member points at it.
        """
        linked = [head] + [address for address, is_linked in entries if is_linked]
        for index, address in enumerate(linked):
            self.write_list_entry(address, linked[(index + 1) % len(linked)], linked[index - 1])
        previous = head
        for position, (address, is_linked) in enumerate(entries):
            if is_linked:
                previous = address
                continue
            following = next((a for a, ok in entries[position + 1 :] if ok), head)
            self.write_list_entry(address, following, previous)

    def unicode_string_values(self, prefix: str, text: str, buffer: int, length: Optional[int] = None) -> Dict[str, int]:
        """Members of an embedded _UNICODE_STRING at ``prefix``; ``length`` may lie on purpose."""
        encoded = len(text.encode("utf-16-le"))
        return {
            f"{prefix}.Length": encoded if length is None else length,
            f"{prefix}.MaximumLength": encoded + 2,
            f"{prefix}.Buffer": canonical(buffer) if buffer else 0,
        }

    def allocate_string(self, text: str, tag: bytes = b"ObNm", paged: bool = True) -> Tuple[PoolBlock, int]:
        """A NUL-terminated UTF-16 string in pool; returns the block and the buffer address."""
        data = text.encode("utf-16-le") + b"\x00\x00"
        block = (self.paged if paged else self.nonpaged).allocate(len(data), tag)
        self.space.write(block.body, data)
        return block, block.body
