"""What every kernel pool allocator of the forge shares: blocks, their states, pool headers.

Two allocators model how Windows hands out and takes back small pool blocks, each in a module
of its own that answers the same two questions, "place a block of this size and pool type"
(:meth:`PoolAllocator.allocate`) and "free it" (:meth:`PoolAllocator.free`, which returns how the
kernel took it back):

- ``classic_pool.ClassicPool``: the pool of Windows 7 to 10 1809 (builds up to 17763), pages
  carved into blocks behind ``_POOL_HEADER``s, frees to per-processor lookaside lists, the
  descriptor's pending list or its ``ListHeads``;
- ``segment_heap.SegmentHeapPool``: the kernel's segment heap of Windows 10 1903 and later
  (build 18362+), LFH and VS subsegments in page segments under ``nt!ExPoolState``.

Scenario code asks them and never computes a heap offset itself. Every small block starts with
the build's ``_POOL_HEADER`` (tag, ``BlockSize`` in units of the header's size, pool type), then
holds the caller's data at ``PoolBlock.body``. A request too large for a pool page is a big-pool
allocation (``big_pool.py``): whole pages without a header, recorded in ``nt!PoolBigPageTable``;
both allocators place those pages and share the table's bookkeeping below.
"""

import abc
import enum
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from ..memory.machine import Machine
from ..memory.physical import PAGE_SIZE, canonical
from ..profiles.layout import KernelLayout

if TYPE_CHECKING:
    from .big_pool import BigPageTable

# Vista and later keep the base pool type with an in-use bit (0x2) in the header: allocated
# non-paged blocks read 2 (even), paged ones 3 (odd), as Volatility's POOL_HEADER_VISTA decodes
# them. The WRK (Server 2003) stores type + 1 with an in-use bit 0x4 instead; the Vista+
# encoding cannot be checked against published source here, it is the one Volatility and the
# ISF-era tools agree on. Non-paged NX pool (0x200) does not fit the 8-bit header field: its
# blocks read 2 as well.
POOL_TYPE_FREE = 0
POOL_TYPE_NONPAGED = 2
POOL_TYPE_PAGED = 3
POOL_IN_USE_BIT = 0x2


class PoolKind(enum.Enum):
    """Which pool a block comes from."""

    NONPAGED = "nonpaged"  # NonPagedPoolNx from Windows 8 on (no execute), NonPagedPool before
    NONPAGED_EXECUTE = "nonpaged_execute"  # NonPagedPool: executable pages (shellcode, old drivers)
    PAGED = "paged"

    @property
    def header_pool_type(self) -> int:
        return POOL_TYPE_PAGED if self is PoolKind.PAGED else POOL_TYPE_NONPAGED

    @property
    def executable(self) -> bool:
        return self is PoolKind.NONPAGED_EXECUTE


class FreedHow:
    """How the kernel took a freed block back (``PoolBlock.how``)."""

    LFH = "lfh"  # segment heap LFH: bitmap bits cleared, no byte of the block changed
    VS = "vs"  # segment heap VS: chunk header says free, the free-tree node overwrote the pool header
    VS_DELAY = "vs_delay"  # segment heap VS delay-free list: chunk still decodes allocated, link over the pool header
    LOOKASIDE = "lookaside"  # classic: per-processor lookaside list, next link at body+0
    PENDING = "pending"  # classic: the pool descriptor's pending-frees list, next link at body+0
    LIST = "list"  # classic: the descriptor's ListHeads, PoolType 0, LIST_ENTRY at body
    BIG = "big"  # big pool: free bit in its PoolBigPageTable entry's Va, pages unmapped


ALLOCATED = "allocated"
FREED = "freed"
BIG_CONTAINER = "big"  # PoolBlock.container of a big-pool allocation


@dataclass(eq=False)
class PoolBlock:
    """One pool allocation: where it is, what holds it, and what became of it."""

    header: int  # virtual address of its _POOL_HEADER
    body: int  # the caller's data, right after the header
    size: int  # bytes of the block, header included (BlockSize in bytes)
    tag: bytes
    kind: PoolKind
    container: str  # "lfh", "vs" (segment heap), "page" (classic pool page) or "big" (whole pages)
    subsegment: Optional[int] = None  # LFH/VS subsegment holding it (segment heap)
    role: str = "noise"  # what the forge put in it (registration, callback_object, ...)
    state: str = ALLOCATED
    how: Optional[str] = None  # a FreedHow value once freed
    # False once the free wrote over the pool header (tag gone) or unmapped it: a tag scanner
    # cannot find the block any more.
    header_intact: bool = True

    @property
    def freed(self) -> bool:
        return self.state == FREED

    def record(self) -> Dict[str, object]:
        """The ground truth's view of the block (addresses as Volatility renders them)."""
        mask = (1 << 48) - 1
        return {
            "header": self.header & mask,
            "body": self.body & mask,
            "size": self.size,
            "tag": self.tag.decode("latin-1"),
            "pool": self.kind.value,
            "container": self.container,
            "subsegment": None if self.subsegment is None else self.subsegment & mask,
            "role": self.role,
            "state": self.state,
            "how": self.how,
            "header_intact": self.header_intact,
        }


def tag_value(tag: bytes) -> int:
    if len(tag) != 4:
        raise ValueError(f"pool tags are four bytes, not {tag!r}")
    return int.from_bytes(tag, "little")


class PoolHeaders:
    """Packs the build's ``_POOL_HEADER`` (cached: scenarios write tens of thousands)."""

    def __init__(self, layout: KernelLayout) -> None:
        self._layout = layout
        self.size = layout.size_of("_POOL_HEADER")
        # The pool's granularity is its header's size: 16 bytes on x64, 8 on x86.
        self.unit = self.size
        self._cache: Dict[Tuple[int, int, int, int, bytes], bytes] = {}

    def units(self, size: int) -> int:
        """Units of a block holding ``size`` bytes of caller data behind its header."""
        return (self.size + size + self.unit - 1) // self.unit

    def align(self, value: int) -> int:
        """``value`` rounded up to the pool's granularity."""
        return -(-value // self.unit) * self.unit

    def block_bytes(self, block: PoolBlock) -> bytes:
        """A block as it is handed out: its header (no previous size, pool index 0), a zeroed body."""
        return self.pack(block.size // self.unit, block.tag, block.kind.header_pool_type) + bytes(block.size - self.size)

    def pack(self, block_units: int, tag: bytes, pool_type: int, previous_units: int = 0, pool_index: int = 0) -> bytes:
        key = (block_units, previous_units, pool_type, pool_index, tag)
        packed = self._cache.get(key)
        if packed is None:
            packed = self._layout.pack("_POOL_HEADER", {
                "BlockSize": block_units, "PreviousSize": previous_units, "PoolType": pool_type,
                "PoolIndex": pool_index, "PoolTag": tag_value(tag),
            })
            self._cache[key] = packed
        return packed


class PoolAllocator(abc.ABC):
    """Places pool blocks and takes them back as the build's kernel does."""

    #: truth.json's name of the allocator
    name: str

    def __init__(self, headers: PoolHeaders) -> None:
        self.headers = headers
        self.blocks: List[PoolBlock] = []  # small blocks, each behind its pool header
        # nt!PoolBigPageTable and the big allocations, where the build's symbols have it
        # (set by the allocator, which places the pages).
        self.big_pool: Optional["BigPageTable"] = None

    @property
    def big_threshold(self) -> int:
        """Requests of more bytes than this are big-pool allocations (``big_pool.py``): a page
        less a pool header and the smallest block (the WRK's ``POOL_BUDDY_MAX``; 0xFE0 on x64,
        0xFF0 on x86, MemProcFS's ``cbBigPoolThreshold`` for the segment heap)."""
        return PAGE_SIZE - 2 * self.headers.size

    def allocate(self, size: int, tag: bytes, kind: PoolKind = PoolKind.NONPAGED, role: str = "noise") -> PoolBlock:
        """A block for ``size`` bytes of caller data, its body zeroed: a small block behind its
        pool header, or for more than :attr:`big_threshold` bytes whole pages of big pool."""
        if size > self.big_threshold:
            return self._allocate_big(size, tag, kind, role)
        return self._record(self._allocate_small(size, tag, kind, role))

    def free(self, block: PoolBlock) -> str:
        """Free ``block`` as ``ExFreePoolWithTag`` would; returns the :class:`FreedHow`."""
        self._check_live(block)
        if block.container == BIG_CONTAINER:
            assert self.big_pool is not None
            self.big_pool.untrack(block)
            self._release_big_pages(block)
            return FreedHow.BIG
        return self._free_small(block)

    @abc.abstractmethod
    def _allocate_small(self, size: int, tag: bytes, kind: PoolKind, role: str) -> PoolBlock:
        """Place a block of at most :attr:`big_threshold` bytes of data and write its header."""

    @abc.abstractmethod
    def _free_small(self, block: PoolBlock) -> str:
        """Take a live small block back; returns the :class:`FreedHow`."""

    @abc.abstractmethod
    def _big_pages(self, kind: PoolKind, pages: int) -> int:
        """Map ``pages`` fresh pages of ``kind``'s pool for a big allocation; their address."""

    @abc.abstractmethod
    def _release_big_pages(self, block: PoolBlock) -> None:
        """Give a freed big allocation's pages back (unmapped, as memory management takes them)."""

    def _allocate_big(self, size: int, tag: bytes, kind: PoolKind, role: str) -> PoolBlock:
        if self.big_pool is None:
            raise ValueError(f"{size:#x} bytes need a big-pool allocation, and this build's symbols have no "
                             "nt!PoolBigPageTable")
        pages = -(-size // PAGE_SIZE)
        address = self._big_pages(kind, pages)
        block = PoolBlock(address, address, pages * PAGE_SIZE, tag, kind, BIG_CONTAINER, role=role)
        self.big_pool.track(block, size)
        return block

    @abc.abstractmethod
    def finish(self) -> None:
        """Write the metadata that summarises the blocks (lists, bitmaps, trees, counters)."""

    @abc.abstractmethod
    def describe(self) -> Dict[str, object]:
        """Where the allocator's roots are, for the ground truth."""

    def _record(self, block: PoolBlock) -> PoolBlock:
        self.blocks.append(block)
        return block

    def _noise(self, machine: Machine, plan: random.Random, rng: random.Random, kind: PoolKind,
               sizes: Sequence[int]) -> None:
        """What a booted kernel leaves behind: blocks of these data sizes, in this order, with
        common tags and random contents (``rng``: they vary with the seed); a third of them,
        chosen by ``plan`` (which does not), freed again in allocation order."""
        blocks = []
        for size in sizes:
            block = self.allocate(size, rng.choice(NOISE_TAGS), kind)
            machine.space.write(block.body, rng.getrandbits(8 * size).to_bytes(size, "little"))
            blocks.append(block)
        for block in blocks:
            if plan.randrange(3) == 0:
                self.free(block)

    def _big_noise(self, machine: Machine, rng: random.Random) -> None:
        """The big allocations of a booted kernel: a few of a few pages in each pool, random
        contents (``rng``), one freed; the plan (sizes, which is freed) is the same for every seed."""
        if self.big_pool is None:
            return
        plan = random.Random(NOISE_PLAN_SEED + ":big")
        blocks = []
        for kind, count in ((PoolKind.NONPAGED, 3), (PoolKind.PAGED, 2)):
            for _ in range(count):
                size = plan.randrange(self.big_threshold + 1, 6 * PAGE_SIZE, self.headers.unit)
                block = self.allocate(size, rng.choice(NOISE_TAGS), kind)
                machine.space.write(block.body, rng.getrandbits(8 * size).to_bytes(size, "little"))
                blocks.append(block)
        self.free(blocks[plan.randrange(len(blocks))])

    @staticmethod
    def _check_live(block: PoolBlock) -> None:
        if block.freed:
            raise ValueError(f"block {block.header:#x} ({block.tag!r}) is already free")


def write_slist_header(machine: Machine, address: int, first: int, depth: int) -> None:
    """An interlocked singly linked list head (``_SLIST_HEADER``) as the build's ISF lays it out.

    x64: ``HeaderX64`` keeps ``Depth`` and ``Sequence`` in the first quadword and the first
    entry's address >> 4 in ``NextEntry`` (bits 4-63 of the second); where the table also has
    ``Header16`` (Windows 7), its ``HeaderType`` 1 marks that 16-byte format and ``Init`` 1 an
    initialised header (the Windows 7 WDK's reading, not checkable here). x86: ``Next`` (the
    first entry), ``Depth`` and a sequence number. Each entry's first pointer names the next.
    """
    layout = machine.layout
    if layout.has_field("_SLIST_HEADER", "HeaderX64"):
        values = {"HeaderX64.Depth": depth, "HeaderX64.Sequence": depth,
                  "HeaderX64.NextEntry": canonical(first) >> 4 if first else 0}
        if layout.has_field("_SLIST_HEADER", "Header16"):
            values.update({"Header16.HeaderType": 1, "Header16.Init": 1})
    else:
        values = {"Next.Next": first, "Depth": depth}
    machine.write_fields(address, "_SLIST_HEADER", values)


#: The noise plan (how many blocks of which size, which are freed) is the same for every seed:
#: a seed varies the layout, never the inventory.
NOISE_PLAN_SEED = "callbackobjects-forge:noise-plan"

# Tags of pool blocks a running kernel is full of (drivers' and the executive's), for noise.
NOISE_TAGS = (
    b"Ntfx", b"File", b"Even", b"Irp ", b"MmSt", b"Vad ", b"Toke", b"Thre", b"Proc", b"Sema",
    b"Muta", b"Key ", b"CM31", b"NtFs", b"FMfn", b"FMsl", b"Mdl ", b"Wait", b"Io  ", b"SeTd",
    b"Ntf0", b"TcpE", b"UdpA", b"NDnd", b"Ipng", b"AfdE", b"Devi", b"Driv", b"Sect", b"ALPC",
    b"EtwR", b"WfpF", b"Pool", b"Vi54", b"smNp", b"CcBc", b"MmCa", b"ObHd", b"IoNm", b"NtFB",
)
