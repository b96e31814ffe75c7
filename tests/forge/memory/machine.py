"""The bare machine of a forged image: physical memory, paging placed as Windows places it, typed writes.

Placement follows what Volatility's automagic looks for on a real Windows machine.

x64:
- the DTB in the low physical range its self-referential-pointer scan covers (Windows 10 puts it
  near 0x1AD000 with a randomised self-map index; Windows 7 uses the fixed index 0x1ED);
- ``KUSER_SHARED_DATA`` at 0xFFFFF78000000000 with the NT version in it;
- the processor start block ("low stub") in the first physical megabyte, whose CR3 and
  long-mode target lead Volatility's PDB scanner to the kernel image;
- the kernel and drivers at randomised bases inside the range the loader uses (KASLR), the
  pool's virtual regions at randomised places.

x86 (PAE or not):
- the DTB at 0x185000, inside the range the fixed-index scan covers (PAE: PDPT there, the four
  page directories in the four pages after it, as on a booted Windows 7);
- ``KUSER_SHARED_DATA`` at 0xFFDF0000, whose NtMajorVersion Volatility checks;
- no low stub: the loader maps the kernel at a fixed offset, virtual = physical + 0x80000000,
  which is how Volatility's PDB scanner finds a 32-bit kernel (``method_fixed_mapping``); the
  x86 layout is not randomised.

A seed varies the layout (frames, bases, pool placement, noise contents) but never what is
planted: the same scenario on the same build with another seed holds the same inventory.

The pool allocators write through this machine. The fixed pages (``KUSER_SHARED_DATA``, the
low stub) and the pool are the kernel's: ``kernel.machine.KernelMachine`` adds them.
"""

import random
from typing import Dict, Optional, Sequence, Tuple

from ..profiles.layout import KernelLayout, pack_pointer
from .paging import AddressSpace, KernelAddressSpace, PaeAddressSpace, X86AddressSpace
from .physical import PAGE_SIZE, PhysicalMemory, canonical

KUSER_SHARED_DATA = 0xFFFF_F780_0000_0000
KUSER_SHARED_DATA_X86 = 0xFFDF_0000
X86_KERNEL_MAPPING = 0x8000_0000  # x86 loader: kernel virtual address = physical + 2 GiB

#: The seed of every image forged without one: images stay the same from run to run.
DEFAULT_SEED = 1
#: When the machine's memory was captured (FILETIME: 2024-11-21 15:28:22 UTC): the system time
#: of its crash dumps' headers; what the kernel recorded happened before it.
CAPTURE_TIME = 0x01DB_3C2A_0000_0000

# Windows 10 x64 loads the kernel on a 2 MiB boundary in 0xFFFFF800`00000000-0xFFFFF807`FFFFFFFF
# (the top PML4 slot before the self-map was randomised); drivers follow it in that range.
WIN10_IMAGE_RANGE = (0xFFFF_F800_0000_0000, 0x7_0000_0000)
KERNEL_ALIGNMENT_WIN10 = 0x20_0000
# Windows 7 x64: the kernel a few MiB into 0xFFFFF800`00000000, drivers from 0xFFFFF880`00000000.
WIN7_KERNEL_RANGE = (0xFFFF_F800_0240_0000, 0x40_0000)
WIN7_DRIVER_RANGE = (0xFFFF_F880_00C0_0000, 0x100_0000)
# PML4 slots (0x100-0x1FE) Windows 10 x64 never hands to the dynamic kernel regions the forge
# places at random: KUSER_SHARED_DATA's (0x1EF) and the kernel images' (0x1F0).
WIN10_RESERVED_SLOTS = (0x1EF, 0x1F0)
# nt!MmSystemRangeStart, the lowest kernel-space address: 2 GiB on x86 (no /3GB); on x64
# 0xFFFF0800`00000000 up to Windows 7 and 0xFFFF8000`00000000 from Windows 8, when user space
# grew to 128 TiB (the same two constants, MM_SYSTEM_RANGE_START_7/_8, in public kernel-mode
# tools; Volatility's windows.modules falls back to the latter on x64).
SYSTEM_RANGE_START_X86 = 0x8000_0000
SYSTEM_RANGE_START_WIN7_X64 = 0xFFFF_0800_0000_0000
SYSTEM_RANGE_START_X64 = 0xFFFF_8000_0000_0000
#: A dynamic region starts at a random 2 MiB boundary in the first 16 GiB of its PML4 slot.
REGION_SPREAD = 0x4_0000_0000
REGION_ALIGNMENT = 0x20_0000


def streams(seed: int, name: str) -> random.Random:
    """An independent random stream per purpose, so that adding draws to one leaves the others."""
    return random.Random(f"callbackobjects-forge:{seed}:{name}")


class AddressPlan:
    """Virtual and physical placement for one Windows generation, varied by ``rng``."""

    def __init__(self, layout: KernelLayout, rng: random.Random) -> None:
        # Physical frame of the kernel image when the loader maps it at a fixed offset (x86).
        self.kernel_physical: Optional[int] = None
        if not layout.is_64bit:
            self.system_range_start = SYSTEM_RANGE_START_X86
            self.dtb = 0x185000
            self.self_ref_index = 3 if layout.pae else 0x300
            self.kernel_base = 0x8284_0000
            self.driver_base: Optional[int] = None  # drivers follow the kernel
            self.kernel_physical = self.kernel_base - X86_KERNEL_MAPPING
            self.nonpaged_pool = 0x8440_0000
            self.paged_pool = 0x8A20_0000
            self.system_region = 0x8F80_0000
            self.filler_region: Optional[int] = None  # no room for bulk in 2 GiB of kernel space
            self.kuser_shared_data = KUSER_SHARED_DATA_X86
            self.unmapped = 0x9F0D_E000
            return
        self.kuser_shared_data = KUSER_SHARED_DATA
        self.system_range_start = SYSTEM_RANGE_START_X64 if layout.nt_version > (6, 1) else SYSTEM_RANGE_START_WIN7_X64
        if layout.nt_version >= (10, 0):
            self.dtb = 0x1AD000
            candidates = [slot for slot in range(0x100, 0x1FF) if slot not in WIN10_RESERVED_SLOTS]
            self_ref, nonpaged, paged, system, filler, unmapped = rng.sample(candidates, 6)
            self.self_ref_index = self_ref
            start, span = WIN10_IMAGE_RANGE
            self.kernel_base = start + rng.randrange(span // KERNEL_ALIGNMENT_WIN10) * KERNEL_ALIGNMENT_WIN10
            self.driver_base = None
            self.nonpaged_pool = self._region(nonpaged, rng)
            self.paged_pool = self._region(paged, rng)
            self.system_region = self._region(system, rng)
            self.filler_region: Optional[int] = self._region(filler, rng)
            self.unmapped = self._region(unmapped, rng) + 0xDEAD_0000
        else:
            self.dtb = 0x187000
            self.self_ref_index = 0x1ED
            start, span = WIN7_KERNEL_RANGE
            self.kernel_base = start + rng.randrange(span // PAGE_SIZE) * PAGE_SIZE
            start, span = WIN7_DRIVER_RANGE
            self.driver_base = start + rng.randrange(span // 0x10000) * 0x10000
            self.nonpaged_pool = 0xFFFF_FA80_0000_0000 + rng.randrange(0x400) * 0x100000
            self.paged_pool = 0xFFFF_F8A0_0000_0000 + rng.randrange(0x400) * 0x100000
            self.system_region = 0xFFFF_F880_0040_0000
            self.filler_region = 0xFFFF_FA81_0000_0000
            # Addresses that never get a page: targets for planted dangling pointers.
            self.unmapped = 0xFFFF_FA00_DEAD_0000

    @staticmethod
    def _region(slot: int, rng: random.Random) -> int:
        return canonical((slot << 39) + rng.randrange(REGION_SPREAD // REGION_ALIGNMENT) * REGION_ALIGNMENT)


class Machine:
    """Physical memory, one kernel address space placed by an :class:`AddressPlan`, typed writes."""

    def __init__(self, layout: KernelLayout, memory_size: int = 0, seed: int = DEFAULT_SEED) -> None:
        self.layout = layout
        self.seed = seed
        self.plan = AddressPlan(layout, streams(seed, "layout"))
        self.physical = PhysicalMemory(streams(seed, "frames"), minimum_size=memory_size)
        self.space: KernelAddressSpace
        if layout.is_64bit:
            self.space = AddressSpace(self.physical, self.plan.dtb, self.plan.self_ref_index)
        elif layout.pae:
            self.space = PaeAddressSpace(self.physical, self.plan.dtb)
        else:
            self.space = X86AddressSpace(self.physical, self.plan.dtb)
        self._next_system_page = self.plan.system_region

    def allocate_system_pages(self, count: int, executable: bool = False) -> int:
        """Non-pool kernel memory (processor blocks, descriptor arrays, a rootkit's own code):
        fresh mapped pages."""
        address = self._next_system_page
        self.space.map_range(address, count * PAGE_SIZE, executable=executable)
        self._next_system_page += (count + 1) * PAGE_SIZE  # a guard page between allocations
        return address

    # -- typed writes --------------------------------------------------------------------

    def write_struct(self, address: int, type_name: str, values: Dict[str, int], size: Optional[int] = None) -> None:
        """Write a whole structure: the named members set, all others zero."""
        self.space.write(address, self.layout.pack(type_name, values, size))

    def write_fields(self, address: int, type_name: str, values: Dict[str, int]) -> None:
        """Change some members of a structure already in memory, leaving the rest alone
        (one read and one write of the span the members cover)."""
        specs = [(self.layout.field(type_name, path), value) for path, value in values.items()]
        start = min(spec.offset for spec, _ in specs)
        end = max(spec.offset + spec.size for spec, _ in specs)
        buffer = bytearray(self.space.read(address + start, end - start))
        for spec, value in specs:
            spec.encode_into(buffer, -start, value)
        self.space.write(address + start, bytes(buffer))

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
