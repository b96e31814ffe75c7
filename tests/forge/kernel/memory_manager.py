"""The memory manager's globals that readers of a whole machine look at: the RAM the kernel
describes, the drivers unloaded since boot, and the sessions processes belong to.

- ``nt!MmPhysicalMemoryBlock`` (WRK ``MmInitializeMemoryLimits``, ``base/ntos/mm/MMINIT.C``): a
  ``_PHYSICAL_MEMORY_DESCRIPTOR`` allocated from non-paged pool with tag ``MmMl`` (``'lMmM'``),
  sized for its runs (the type holds one ``Run``; each further run adds one), holding
  ``NumberOfRuns``, ``NumberOfPages`` and the runs of physical pages RAM is made of: here the
  runs of the forge's physical memory, the same that every crash dump's header carries
  (``image/dump.py``). A raw image must hold all of them; the plugin checks its size against them.
  Allocating the block can grow the forge's RAM, so its runs are written last
  (:meth:`MemoryManager.write_physical_memory_block`, once nothing else is allocated).
- ``nt!MmUnloadedDrivers`` and ``nt!MmLastUnloadedDriver`` (WRK ``MiRememberUnloadedDriver``,
  ``base/ntos/mm/SYSLOAD.C``, called as a driver image is unloaded): on the first unload an
  array of ``MI_UNLOADED_DRIVERS`` (50, ``MI.H``) entries, non-paged pool, tag ``MmDT``
  (``'TDmM'``), zeroed; each unload fills the next entry: ``Name`` a copy of the loader entry's
  ``BaseDllName`` (its own ``MmDT`` buffer of ``Length`` bytes, no terminating NUL,
  ``MaximumLength`` copied), ``StartAddress`` the image base, ``EndAddress`` the base plus
  ``SizeOfImage`` rounded down to pages, ``CurrentTime`` the system time; ``MmLastUnloadedDriver``
  is the index of the next entry. No kernel ISF has the entry's type (``UNLOADED_DRIVERS`` in
  the WRK's ``MM.H``: a ``UNICODE_STRING``, two pointers, a ``LARGE_INTEGER``; Volatility's own
  ``unloadedmodules-x64.json``/``-x86.json`` call it ``_UNLOADED_DRIVER``): its layout follows
  from the build's ``_UNICODE_STRING`` and pointer size, with natural alignment.
- Sessions (WRK ``MiSessionCreateInternal`` and ``MiSessionAddProcess``, ``base/ntos/mm/SESSION.C``):
  a session's ``_MM_SESSION_SPACE`` lives in pages mapped twice, at the session-space address
  and, the global view, in system PTEs; ``_EPROCESS.Session`` of each process of the session
  points at the global view, whose ``ReferenceCount`` counts them, ``SessionId`` names the
  session and ``ProcessList`` links their ``SessionProcessLinks``. System, Registry and
  ``smss.exe`` belong to no session (``Session`` NULL).

Left out: the session-space mapping itself (``MmSessionSpace``, the per-session page tables and
session pool), every other member of ``_MM_SESSION_SPACE``, the ring of unloaded drivers wrapping
around after 50 unloads (no story unloads that many), and the kernel's other views of RAM
(``MmHighestPhysicalPage``/``MmNumberOfPhysicalPages`` of 7601 and 9600, the partition's from
14393 on, ``KUSER_SHARED_DATA.NumberOfPhysicalPages``).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional

from ..allocators.pool import PoolBlock, PoolKind
from ..memory.machine import CAPTURE_TIME
from ..memory.physical import PAGE_SIZE, canonical

if TYPE_CHECKING:
    from .machine import KernelMachine
    from .modules import LoadedModule
    from .processes import Process

MI_UNLOADED_DRIVERS = 50
UNLOADED_DRIVERS_TAG = b"MmDT"
PHYSICAL_MEMORY_TAG = b"MmMl"
#: When the forge's drivers were unloaded: an hour before the machine's memory was captured.
UNLOAD_TIME = CAPTURE_TIME - 3600 * 10_000_000
LARGE_INTEGER = 8


@dataclass(frozen=True)
class UnloadedDriverLayout:
    """The WRK's ``UNLOADED_DRIVERS`` for one build (see the module docstring): offsets of its
    members after ``Name`` (a UNICODE_STRING at 0), and its size."""

    start: int
    end: int
    time: int
    size: int

    @classmethod
    def of(cls, unicode_string_size: int, pointer_size: int) -> "UnloadedDriverLayout":
        start = unicode_string_size
        end = start + pointer_size
        time = -(-(end + pointer_size) // LARGE_INTEGER) * LARGE_INTEGER
        size = -(-(time + LARGE_INTEGER) // max(pointer_size, LARGE_INTEGER)) * max(pointer_size, LARGE_INTEGER)
        return cls(start, end, time, size)


class MemoryManager:
    """Writes the memory manager's globals once the rest of the image is in place."""

    def __init__(self, machine: "KernelMachine", kernel_base: int) -> None:
        self.machine = machine
        self.layout = machine.layout
        self.kernel_base = kernel_base
        self._physical_memory_block: Optional[PoolBlock] = None
        self._capacity = 0
        #: The global view of each session's _MM_SESSION_SPACE, by session id.
        self.sessions: Dict[int, int] = {}
        #: Every driver remembered as unloaded: name, entry address, start and end.
        self.unloaded: List[Dict[str, object]] = []

    def _has(self, symbol: str, *types: str) -> bool:
        return self.layout.has_symbol(symbol) and all(self.layout.has_type(name) for name in types)

    # -- MmPhysicalMemoryBlock -----------------------------------------------------------

    def allocate_physical_memory_block(self) -> None:
        """The descriptor's block, sized for the runs RAM has now (one more for a run a later
        allocation might add); its contents come last."""
        if not self._has("MmPhysicalMemoryBlock", "_PHYSICAL_MEMORY_DESCRIPTOR", "_PHYSICAL_MEMORY_RUN"):
            return
        self._capacity = len(list(self.machine.physical.runs())) + 1
        size = self.layout.size_of("_PHYSICAL_MEMORY_DESCRIPTOR") + self.layout.size_of("_PHYSICAL_MEMORY_RUN") * (self._capacity - 1)
        self._physical_memory_block = self.machine.pool.allocate(size, PHYSICAL_MEMORY_TAG, role="physical_memory_block")
        self.machine.write_pointer(self.kernel_base + self.layout.symbol("MmPhysicalMemoryBlock"), self._physical_memory_block.body)

    def write_physical_memory_block(self) -> None:
        """``NumberOfRuns``, ``NumberOfPages`` and the runs of RAM as it is once everything is
        allocated (writing them allocates nothing)."""
        block = self._physical_memory_block
        if block is None:
            return
        runs = list(self.machine.physical.runs())
        if len(runs) > self._capacity:
            raise ValueError(f"RAM grew to {len(runs)} runs after MmPhysicalMemoryBlock was sized for {self._capacity}")
        layout = self.layout
        self.machine.write_struct(block.body, "_PHYSICAL_MEMORY_DESCRIPTOR", {
            "NumberOfRuns": len(runs), "NumberOfPages": sum(count for _, count in runs)})
        run_offset = layout.offset_of("_PHYSICAL_MEMORY_DESCRIPTOR", "Run")
        run_size = layout.size_of("_PHYSICAL_MEMORY_RUN")
        for index, (first, count) in enumerate(runs):
            self.machine.write_struct(block.body + run_offset + index * run_size, "_PHYSICAL_MEMORY_RUN",
                                      {"BasePage": first, "PageCount": count})

    # -- MmUnloadedDrivers ---------------------------------------------------------------

    def remember_unloaded(self, drivers: List["LoadedModule"]) -> None:
        """The unloaded-driver ring, as ``MiRememberUnloadedDriver`` leaves it after these unloads."""
        if not drivers or not self._has("MmUnloadedDrivers") or not self.layout.has_symbol("MmLastUnloadedDriver"):
            return
        machine, layout = self.machine, self.layout
        entry = UnloadedDriverLayout.of(layout.size_of("_UNICODE_STRING"), layout.pointer_size)
        ring = machine.pool.allocate(MI_UNLOADED_DRIVERS * entry.size, UNLOADED_DRIVERS_TAG, role="unloaded_drivers")
        machine.write_pointer(self.kernel_base + layout.symbol("MmUnloadedDrivers"), ring.body)
        for index, driver in enumerate(drivers):
            address = ring.body + index * entry.size
            name = driver.name.encode("utf-16-le")
            buffer = machine.pool.allocate(len(name), UNLOADED_DRIVERS_TAG, role="unloaded_driver_name")
            machine.space.write(buffer.body, name)
            machine.write_struct(address, "_UNICODE_STRING",
                                 {"Length": len(name), "MaximumLength": len(name) + 2, "Buffer": canonical(buffer.body)})
            end = driver.base + driver.size // PAGE_SIZE * PAGE_SIZE
            machine.write_pointer(address + entry.start, driver.base)
            machine.write_pointer(address + entry.end, end)
            machine.space.write(address + entry.time, UNLOAD_TIME.to_bytes(LARGE_INTEGER, "little"))
            self.unloaded.append({"name": driver.name, "entry": address, "start": driver.base, "end": end})
        machine.space.write(self.kernel_base + layout.symbol("MmLastUnloadedDriver"), len(drivers).to_bytes(4, "little"))

    # -- sessions ------------------------------------------------------------------------

    def create_sessions(self, processes: List["Process"]) -> None:
        """A ``_MM_SESSION_SPACE`` per session the processes belong to, each process's
        ``Session`` pointing at it and linked into its ``ProcessList``."""
        layout = self.layout
        if not (layout.has_type("_MM_SESSION_SPACE") and layout.has_field("_EPROCESS", "Session")
                and layout.has_field("_EPROCESS", "SessionProcessLinks")):
            return
        members: Dict[int, List["Process"]] = {}
        for process in processes:
            if process.session is not None:
                members.setdefault(process.session, []).append(process)
        pages = -(-layout.size_of("_MM_SESSION_SPACE") // PAGE_SIZE)
        links = layout.offset_of("_EPROCESS", "SessionProcessLinks")
        for session, inside in sorted(members.items()):
            space = self.machine.allocate_system_pages(pages)
            self.sessions[session] = space
            self.machine.write_struct(space, "_MM_SESSION_SPACE", {"ReferenceCount": len(inside), "SessionId": session})
            self.machine.write_list(space + layout.offset_of("_MM_SESSION_SPACE", "ProcessList"),
                                    [(process.eprocess + links, True) for process in inside])
            for process in inside:
                self.machine.write_pointer(process.eprocess + layout.offset_of("_EPROCESS", "Session"), space)
