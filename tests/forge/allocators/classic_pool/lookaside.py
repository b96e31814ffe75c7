"""The classic pool's per-processor lookaside lists, in the processor blocks that hold them.

Every processor's ``_KPRCB`` (inside its ``_KPCR``) holds one ``_GENERAL_LOOKASIDE_POOL`` per
block size of up to ``POOL_SMALL_LISTS`` units in each of its arrays: ``PPNPagedLookasideList``
(non-paged), ``PPPagedLookasideList`` (paged) and, from Windows 8, ``PPNxPagedLookasideList``
(no-execute non-paged); ``nt!KiProcessorBlock`` points at the KPRCBs. When a free goes to one
is the allocator's business (the package's docstring).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from ...memory.machine import Machine
from ...memory.physical import PAGE_SIZE
from ..pool import PoolKind, write_slist_header
from .pages import PageEntry, push

POOL_SMALL_LISTS = 32  # WRK base/ntos/inc/ntosdef.h
PROCESSORS = 2
LOOKASIDE_DEPTH = 4
# _POOL_TYPE of each lookaside array's lists: NonPagedPool, PagedPool, NonPagedPoolNx
LOOKASIDE_TYPES = {"PPNPagedLookasideList": 0, "PPPagedLookasideList": 1, "PPNxPagedLookasideList": 0x200}


@dataclass(eq=False)
class Lookaside:
    address: int
    member: str  # the _KPRCB array it belongs to
    units: int
    entries: List[PageEntry] = field(default_factory=list)  # oldest first; the head is the last
    frees: int = 0


class Processors:
    """The processors' ``_KPCR`` and ``_KPRCB`` (in system pages) and every lookaside list in them;
    ``nx_lists``: the build has ``PPNxPagedLookasideList`` (Windows 8 and later)."""

    def __init__(self, machine: Machine, unit: int, nx_lists: bool) -> None:
        self.machine = machine
        self.layout = layout = machine.layout
        self.unit = unit
        self.nx_lists = nx_lists
        pcr_size = layout.size_of("_KPCR")
        self._embedded = layout.has_field("_KPCR", "PrcbData")  # x86: PrcbData; x64: Prcb is embedded
        prcb_offset = layout.offset_of("_KPCR", "PrcbData" if self._embedded else "Prcb")
        self.blocks: List[Tuple[int, int]] = []  # (KPCR, KPRCB)
        self.lists: Dict[Tuple[int, str, int], Lookaside] = {}
        lookaside_size = layout.size_of("_GENERAL_LOOKASIDE_POOL")
        members = sorted({self.member(kind) for kind in PoolKind})
        for number in range(PROCESSORS):
            pcr = machine.allocate_system_pages(-(-pcr_size // PAGE_SIZE))
            prcb = pcr + prcb_offset
            self.blocks.append((pcr, prcb))
            for member in members:
                base = prcb + layout.offset_of("_KPRCB", member)
                for units in range(1, POOL_SMALL_LISTS + 1):
                    self.lists[(number, member, units)] = Lookaside(base + (units - 1) * lookaside_size, member, units)

    def member(self, kind: PoolKind) -> str:
        """The ``_KPRCB`` array whose lists take blocks of ``kind``."""
        if kind is PoolKind.PAGED:
            return "PPPagedLookasideList"
        if kind is PoolKind.NONPAGED and self.nx_lists:
            return "PPNxPagedLookasideList"
        return "PPNPagedLookasideList"

    def take(self, processor: int, entry: PageEntry, kind: PoolKind) -> bool:
        """A free on ``processor``: pushed on its list of the block's size unless the list is at
        its depth (then False: the allocator keeps it)."""
        lookaside = self.lists[(processor, self.member(kind), entry.units)]
        lookaside.frees += 1
        if len(lookaside.entries) >= LOOKASIDE_DEPTH:
            return False
        push(self.machine, lookaside.entries, entry)
        entry.state = "lookaside"
        return True

    @property
    def prcbs(self) -> List[int]:
        return [prcb for _, prcb in self.blocks]

    def write_blocks(self) -> None:
        """Each ``_KPCR``'s pointers to itself and its ``_KPRCB``, and the processor's number."""
        for number, (pcr, prcb) in enumerate(self.blocks):
            if self._embedded:
                self.machine.write_fields(pcr, "_KPCR", {"SelfPcr": pcr, "Prcb": prcb})
            else:
                self.machine.write_fields(pcr, "_KPCR", {"Self": pcr, "CurrentPrcb": prcb})
            self.machine.write_fields(prcb, "_KPRCB", {"Number": number})

    def write_lists(self) -> None:
        for lookaside in self.lists.values():
            self._write_list(lookaside)

    def _write_list(self, lookaside: Lookaside) -> None:
        machine = self.machine
        head = lookaside.entries[-1].block.body if lookaside.entries and lookaside.entries[-1].block else 0
        depth = len(lookaside.entries)
        values = {
            "Depth": LOOKASIDE_DEPTH, "MaximumDepth": 256, "Size": lookaside.units * self.unit,
            "Type": LOOKASIDE_TYPES[lookaside.member], "TotalFrees": lookaside.frees, "FreeHits": depth,
        }
        machine.write_fields(lookaside.address, "_GENERAL_LOOKASIDE_POOL", values)
        list_entry = lookaside.address + self.layout.offset_of("_GENERAL_LOOKASIDE_POOL", "ListEntry")
        machine.write_list_entry(list_entry, list_entry, list_entry)
        write_slist_header(machine, lookaside.address + self.layout.offset_of("_GENERAL_LOOKASIDE_POOL", "ListHead"), head, depth)

    def describe_blocks(self) -> List[Dict[str, int]]:
        mask = (1 << 48) - 1
        return [{"kpcr": pcr & mask, "kprcb": prcb & mask} for pcr, prcb in self.blocks]

    def describe_lists(self) -> List[Dict[str, object]]:
        """The lists that hold blocks, by processor, array and size."""
        mask = (1 << 48) - 1
        lists = []
        for (number, member, units), lookaside in sorted(self.lists.items()):
            if lookaside.entries:
                lists.append({"processor": number, "list": member, "units": units, "address": lookaside.address & mask,
                              "blocks": [e.block.body & mask for e in reversed(lookaside.entries) if e.block]})
        return lists
