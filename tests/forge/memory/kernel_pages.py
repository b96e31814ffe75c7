"""Which physical pages a kernel-only crash dump of a forged image holds.

A kernel memory dump (``DumpType`` 6, a live kernel dump or a kernel/automatic crash dump, and
the debugger engine's ``.dump /k``, ``DumpType`` 8) holds "the memory in use by the kernel": what
the kernel half of the virtual address space maps, and the page tables, which the kernel maps
through its self-map. ``.dump /ka`` (``DumpType`` 9) adds user-mode memory. The forge models
exactly that, by walking the paging structures of the image from its DTB, as the processor does:

- every page-table page reachable from the DTB (user half included: the tables themselves are
  kernel data), and
- every frame mapped by a present entry of the kernel half (and of the user half too, for the
  kernel-and-user selection), large pages included.

What the forge leaves out: Windows decides from its PFN database, not by walking page tables,
and also adds pages that no virtual address maps (for example, the processor start block is
mapped by HAL on a real system but not in a forged image, so kernel-only dumps of a forged x64
image lack it; Volatility then finds the kernel from its module list instead of the low stub).
Entries pointing at a table already visited (the self-map, and cycles in hostile tables) are not
followed again, so the walk always ends.
"""

import struct
from bisect import bisect_right
from dataclasses import dataclass
from typing import FrozenSet, Iterable, List, Sequence, Set, Tuple

from .physical import PAGE_SIZE, PhysicalMemory

PRESENT = 1 << 0
LARGE_PAGE = 1 << 7  # PS: the entry maps a large page instead of pointing at a table


@dataclass(frozen=True)
class PagingMode:
    """The shape of one paging mode (Intel SDM vol. 3A, chapter 4).

    ``entries`` gives the number of entries per table, top level first; ``large_page_levels``
    the levels whose entries may map a large page; ``kernel_from`` the first top-level index of
    the kernel half (the upper half of the address space on every mode Windows uses).
    """

    entry_size: int
    entries: Tuple[int, ...]
    kernel_from: int
    frame_mask: int
    large_page_levels: FrozenSet[int]

    def pages_per_entry(self, level: int) -> int:
        pages = 1
        for count in self.entries[level + 1 :]:
            pages *= count
        return pages


X64 = PagingMode(8, (512, 512, 512, 512), 256, 0x000F_FFFF_FFFF_F000, frozenset({1, 2}))
X86_PAE = PagingMode(8, (4, 512, 512), 2, 0x000F_FFFF_FFFF_F000, frozenset({1}))
X86 = PagingMode(4, (1024, 1024), 512, 0xFFFF_F000, frozenset({0}))


def paging_mode(is_64bit: bool, pae: bool) -> PagingMode:
    if is_64bit:
        return X64
    return X86_PAE if pae else X86


def mapped_pages(physical: PhysicalMemory, mode: PagingMode, dtb: int, include_user: bool) -> Set[int]:
    """Page numbers of every page-table page and of every page the kernel half maps (and the
    user half, with ``include_user``); pages outside physical memory are kept (callers clip)."""
    tables: Set[int] = set()
    frames: Set[int] = set()
    entry_format = "<Q" if mode.entry_size == 8 else "<I"
    last_level = len(mode.entries) - 1

    def walk(table: int, level: int, collect: bool) -> None:
        tables.add(table // PAGE_SIZE)
        data = physical.read(table, mode.entries[level] * mode.entry_size)
        for index, (entry,) in enumerate(struct.iter_unpack(entry_format, data)):
            if not entry & PRESENT:
                continue
            keep = collect or (level == 0 and index >= mode.kernel_from)
            target = entry & mode.frame_mask
            if level == last_level or (level in mode.large_page_levels and entry & LARGE_PAGE):
                if keep:
                    first = target // PAGE_SIZE
                    frames.update(range(first, first + mode.pages_per_entry(level)))
            elif target // PAGE_SIZE not in tables:
                walk(target, level + 1, keep)

    walk(dtb, 0, include_user)
    return tables | frames


def runs_of(page_numbers: Iterable[int]) -> List[Tuple[int, int]]:
    """Maximal runs of consecutive page numbers, as (first, count), ascending."""
    runs: List[Tuple[int, int]] = []
    for number in sorted(page_numbers):
        if runs and runs[-1][0] + runs[-1][1] == number:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((number, 1))
    return runs


def clip_to(page_numbers: Iterable[int], ram: Sequence[Tuple[int, int]]) -> List[int]:
    """The page numbers that lie in one of the RAM runs ``ram`` (sorted (first, count))."""
    starts = [first for first, _ in ram]
    kept = []
    for number in page_numbers:
        index = bisect_right(starts, number) - 1
        if index >= 0 and number < ram[index][0] + ram[index][1]:
            kept.append(number)
    return sorted(kept)
