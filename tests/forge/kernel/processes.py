"""The process list: ``_EPROCESS`` objects linked behind ``nt!PsActiveProcessHead``.

A booted Windows has its processes on ``PsActiveProcessHead`` through each ``_EPROCESS``'s
``ActiveProcessLinks``, the System process (PID 4) first, and ``nt!PsInitialSystemProcess``
pointing at System. Readers that have no kernel symbols find the kernel's data through them:
MemProcFS (``vmm/vmmwin.c``) walks the list from the System process to enumerate processes,
refuses an image with ten processes or fewer (``VmmWinProcess_Enum64``) and reads the build
number only once it has seen an ``smss.exe`` whose parent is System (``vmm/vmmwininit.c``).

Each process is an object of type ``Process`` (pool tag ``Proc``) laid out by the build's ISF:
its ``Pcb`` (``_KPROCESS``) starts with a dispatcher header of type ``ProcessObject``
(``_KOBJECTS``) and size ``sizeof(_KPROCESS) / 4`` (the WRK's ``KeInitializeProcess``),
``SignalState`` 0 (a process is signalled when it exits), and ``DirectoryTableBase``; then
``UniqueProcessId``, ``InheritedFromUniqueProcessId``, ``ImageFileName`` (15 bytes, the first 14
characters of the image name and a NUL), ``CreateTime`` (a FILETIME: every process but System
has one, which Volatility's ``EPROCESS.is_valid`` requires of a scan hit), an empty
``ThreadListHead`` (pointing at itself) and the list links.

A process that has exited (:meth:`ProcessList.create_exited`) is as the kernel leaves it once the last
reference is gone: off ``PsActiveProcessHead`` (stale links), ``ExitTime`` set, signalled, its
token and thread objects freed, then its own object block (``PspProcessDelete``, then
``ObpFreeObject``). What was freed is the allocator's business: on the segment heap a freed
``EPROCESS`` chunk keeps its pool header only when the chunk before it was free when the
delay-free list was flushed (it is merged), which the token freed first makes likely; that is the
block ``windows.psscan`` still finds and a pool map calls freed.

:data:`BOOT_PROCESSES` is what a freshly booted desktop runs: System, ``Registry`` (from Windows
10 1803, build 17134), the session manager and the processes it starts. The parents of
``csrss.exe``, ``wininit.exe`` and ``winlogon.exe`` are instances of ``smss.exe`` that exited
after starting them, so their parent PIDs name no listed process, as on a real system.

Left out: user space. The forge maps no user memory, so every process's ``DirectoryTableBase``
is the kernel's page-table root (Windows gives each process a page-table root of its own that
shares the kernel half), ``Peb``, ``ObjectTable`` (handle tables) and ``VadRoot`` are empty, and
running processes have no threads (``ThreadListHead`` is an empty list) and no tokens (only an
exited process's token and thread blocks exist, freed); each process but System has a creation
time (at boot). Sessions are written by ``memory_manager.py``.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from ..allocators.pool import PoolKind
from ..memory.machine import CAPTURE_TIME
from ..memory.physical import masked

if TYPE_CHECKING:
    from ..allocators.pool import PoolBlock
    from .machine import KernelMachine
    from .objects import KernelObject, ObjectManager

SYSTEM_PID = 4
#: A second in FILETIME units (100 ns).
SECOND = 10_000_000
#: When the machine booted (FILETIME): a day before its memory was captured.
BOOT_TIME = CAPTURE_TIME - 24 * 3600 * SECOND
#: The members the forge writes; a layout without all of them (the 32-bit built-in profiles,
#: whose Volatility 2 overlays were extracted without them) gets no processes.
EPROCESS_FIELDS = ("Pcb", "UniqueProcessId", "InheritedFromUniqueProcessId", "ActiveProcessLinks", "ImageFileName")
IMAGE_FILE_NAME_LENGTH = 15
REGISTRY_PROCESS_FIRST_BUILD = 17134
#: What an exited process leaves to free besides its object: its token and thread objects
#: (tags ``Toke`` and ``Thre``; the threads' bodies are not modelled, only their blocks).
TOKEN_SIZE = 0x700
THREAD_SIZE = 0x780
EXITED_THREADS = 36

#: (image name, PID, parent PID, first build or 0) of the processes of a booted system.
BOOT_PROCESSES: Tuple[Tuple[str, int, int, int], ...] = (
    ("System", SYSTEM_PID, 0, 0),
    ("Registry", 92, SYSTEM_PID, REGISTRY_PROCESS_FIRST_BUILD),
    ("smss.exe", 348, SYSTEM_PID, 0),
    ("csrss.exe", 452, 436, 0),
    ("wininit.exe", 524, 436, 0),
    ("csrss.exe", 532, 516, 0),
    ("winlogon.exe", 596, 516, 0),
    ("services.exe", 668, 524, 0),
    ("lsass.exe", 684, 524, 0),
    ("svchost.exe", 788, 668, 0),
    ("svchost.exe", 848, 668, 0),
    ("svchost.exe", 900, 668, 0),
    ("dwm.exe", 976, 596, 0),
    ("svchost.exe", 1016, 668, 0),
    ("explorer.exe", 3148, 3124, 0),
)
#: The session of each boot process by PID (``_EPROCESS.Session``, kernel/memory_manager.py):
#: services in session 0, the logged-on user's in session 1; System, Registry and smss.exe in none.
BOOT_SESSIONS: Dict[int, int] = {452: 0, 524: 0, 668: 0, 684: 0, 788: 0, 848: 0, 900: 0, 1016: 0,
                                 532: 1, 596: 1, 976: 1, 3148: 1}


@dataclass
class Process:
    """One forged process."""

    name: str
    pid: int
    parent_pid: int
    kernel_object: "KernelObject"
    linked: bool = True  # False: unlinked from the list as a rootkit hides a process (DKOM)
    session: Optional[int] = None  # its session, None for System, Registry and smss.exe
    exited: bool = False  # exited and deleted: its blocks freed, off the list

    @property
    def eprocess(self) -> int:
        return self.kernel_object.body

    def record(self) -> Dict[str, object]:
        return {"name": self.name, "pid": self.pid, "parent_pid": self.parent_pid,
                "eprocess": masked(self.eprocess), "linked": self.linked, "session": self.session,
                "exited": self.exited}


class ProcessList:
    """Creates ``_EPROCESS`` objects and links them behind ``nt!PsActiveProcessHead``."""

    def __init__(self, machine: "KernelMachine", objects: "ObjectManager", kernel_base: int) -> None:
        self.machine = machine
        self.layout = machine.layout
        self.objects = objects
        self.kernel_base = kernel_base
        self.processes: List[Process] = []

    @property
    def supported(self) -> bool:
        """Whether the layout has everything the process list needs."""
        layout = self.layout
        return (layout.has_symbol("PsActiveProcessHead") and layout.has_type("_KPROCESS")
                and all(layout.has_field("_EPROCESS", name) for name in EPROCESS_FIELDS))

    def boot(self) -> None:
        """The processes of :data:`BOOT_PROCESSES` this build runs (none where not supported)."""
        if not self.supported:
            return
        build = self.layout.build or 0
        for name, pid, parent, first_build in BOOT_PROCESSES:
            if build >= first_build:
                self.create(name, pid, parent, session=BOOT_SESSIONS.get(pid))

    def create(self, name: str, pid: int, parent_pid: int, linked: bool = True, session: Optional[int] = None) -> Process:
        """A running process; ``linked=False`` leaves it off the list (stale links, as DKOM does);
        ``session``: the session it belongs to (its ``Session`` is written with the sessions)."""
        if not self.supported:
            raise ValueError(f"{self.layout.name}: the layout lacks what the process list needs ({EPROCESS_FIELDS})")
        if any(process.pid == pid for process in self.processes):
            raise ValueError(f"PID {pid} is already taken")
        layout = self.layout
        kernel_object = self.objects.create_object("Process", layout.size_of("_EPROCESS"))
        body = kernel_object.body
        values = {
            "Pcb.Header.Size": layout.size_of("_KPROCESS") // 4,
            "Pcb.Header.SignalState": 0,
            "Pcb.DirectoryTableBase": self.machine.plan.dtb,
            "UniqueProcessId": pid,
            "InheritedFromUniqueProcessId": parent_pid,
        }
        if layout.has_field("_EPROCESS", "CreateTime") and pid != SYSTEM_PID:
            # Created at boot (System has no creation time); readers judge a process by it.
            values["CreateTime.QuadPart"] = BOOT_TIME + pid * 10_000
        process_object = layout.enum_value("_KOBJECTS", "ProcessObject")
        if process_object is not None:
            values["Pcb.Header.Type"] = process_object
        self.machine.write_fields(body, "_EPROCESS", values)
        if layout.has_field("_EPROCESS", "ThreadListHead"):
            # No threads are modelled: an empty list, its head pointing at itself.
            head = body + layout.offset_of("_EPROCESS", "ThreadListHead")
            self.machine.write_list_entry(head, head, head)
        image_name = name.encode("ascii")[: IMAGE_FILE_NAME_LENGTH - 1]
        self.machine.space.write(body + layout.offset_of("_EPROCESS", "ImageFileName"),
                                 image_name.ljust(IMAGE_FILE_NAME_LENGTH, b"\0"))
        process = Process(name, pid, parent_pid, kernel_object, linked, session)
        self.processes.append(process)
        return process

    def create_exited(self, name: str, pid: int, parent_pid: int, ran_seconds: int = 600) -> Tuple[Process, List["PoolBlock"]]:
        """A process that ran and exited: created with its token (allocated just before its
        object, as ``PspAllocateProcess`` gets the token first) and its thread objects, then
        exited (see the module docstring). Returns it and the blocks its deletion frees, in the
        order the kernel frees them: token, process object, threads."""
        pool = self.machine.pool
        token = pool.allocate(TOKEN_SIZE, b"Toke", PoolKind.NONPAGED, role="token")
        process = self.create(name, pid, parent_pid, linked=False)
        threads = [pool.allocate(THREAD_SIZE, b"Thre", PoolKind.NONPAGED, role="thread") for _ in range(EXITED_THREADS)]
        process.exited = True
        layout = self.layout
        body = process.eprocess
        self.machine.write_fields(body, "_EPROCESS", {"Pcb.Header.SignalState": 1})
        if layout.has_field("_EPROCESS", "CreateTime") and layout.has_field("_EPROCESS", "ExitTime"):
            created = int.from_bytes(self.machine.space.read(body + layout.offset_of("_EPROCESS", "CreateTime"), 8), "little")
            exited = created + ran_seconds * SECOND
            self.machine.space.write(body + layout.offset_of("_EPROCESS", "ExitTime"), exited.to_bytes(8, "little"))
        return process, [token] + process.kernel_object.blocks + threads

    @property
    def system(self) -> Optional[Process]:
        return next((process for process in self.processes if process.pid == SYSTEM_PID), None)

    def link(self) -> None:
        """``PsActiveProcessHead`` in creation order, ``PsInitialSystemProcess``, the type's count."""
        if not self.processes:
            return
        links = self.layout.offset_of("_EPROCESS", "ActiveProcessLinks")
        self.machine.write_list(self.kernel_base + self.layout.symbol("PsActiveProcessHead"),
                                [(process.eprocess + links, process.linked) for process in self.processes])
        system = self.system
        if system is not None and self.layout.has_symbol("PsInitialSystemProcess"):
            self.machine.write_pointer(self.kernel_base + self.layout.symbol("PsInitialSystemProcess"), system.eprocess)
        self.objects.set_type_count("Process", sum(1 for process in self.processes if not process.exited))

    def records(self) -> List[Dict[str, object]]:
        return [process.record() for process in self.processes]
