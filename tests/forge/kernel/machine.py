"""The machine a kernel runs on: the bare machine, the kernel's fixed pages and its pool.

The kernel floor and those above it (modules, objects, drivers, processes, the callback
plants) write through a :class:`KernelMachine`; the pool allocators, which it installs, write
through the bare ``memory.machine.Machine`` (which knows no allocator). The fixed pages are
``KUSER_SHARED_DATA``, with the NT version in it, and on x64 the processor start block;
``memory/machine.py`` says where they lie and why.
"""

import struct
from typing import Dict, Optional, Tuple

from ..allocators.classic_pool import ClassicPool
from ..allocators.pool import PoolAllocator, PoolBlock, PoolKind
from ..allocators.segment_heap import SegmentHeapPool
from ..memory.machine import DEFAULT_SEED, Machine, streams
from ..memory.physical import PAGE_SIZE, canonical
from ..profiles.layout import KernelLayout

LOW_STUB_PHYSICAL = 0x1000
LOW_STUB_SIGNATURE = 0x0000_0001_0006_00E9  # JMP opcode, its offset and CompletionFlag
LOW_STUB_LM_TARGET = 0x70
LOW_STUB_CR3 = 0xA0


class KernelMachine(Machine):
    """The bare machine with ``KUSER_SHARED_DATA``, the low stub and the build's pool allocator."""

    def __init__(self, layout: KernelLayout, memory_size: int = 0, seed: int = DEFAULT_SEED) -> None:
        super().__init__(layout, memory_size, seed)
        self._pool: Optional[PoolAllocator] = None
        self._map_shared_user_data()

    # -- the pool --------------------------------------------------------------------------

    def install_pool(self, kernel_base: int) -> PoolAllocator:
        """The build's allocator, its globals written into the (mapped) kernel image."""
        allocator = SegmentHeapPool if self.layout.uses_segment_heap else ClassicPool
        self._pool = allocator(self, kernel_base, streams(self.seed, "pool"))
        return self._pool

    @property
    def pool(self) -> PoolAllocator:
        if self._pool is None:
            raise RuntimeError("the pool exists once the kernel image is mapped (KernelMachine.install_pool)")
        return self._pool

    def allocate_string(self, text: str, tag: bytes = b"ObNm", kind: PoolKind = PoolKind.PAGED,
                        role: str = "name") -> Tuple[PoolBlock, int]:
        """A NUL-terminated UTF-16 string in pool; returns the block and the buffer address."""
        data = text.encode("utf-16-le") + b"\x00\x00"
        block = self.pool.allocate(len(data), tag, kind, role=role)
        self.space.write(block.body, data)
        return block, block.body

    def unicode_string_values(self, prefix: str, text: str, buffer: int, length: Optional[int] = None) -> Dict[str, int]:
        """Members of an embedded _UNICODE_STRING at ``prefix``; ``length`` may lie on purpose."""
        encoded = len(text.encode("utf-16-le"))
        return {
            f"{prefix}.Length": encoded if length is None else length,
            f"{prefix}.MaximumLength": encoded + 2,
            f"{prefix}.Buffer": canonical(buffer) if buffer else 0,
        }

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
