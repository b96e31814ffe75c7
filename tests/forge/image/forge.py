"""The forge's story API: pick a kernel, load drivers, plant callbacks, write the image.

    forge = ImageForge.for_profile("win10")
    driver = forge.add_driver("acme.sys", functions={"AcmePowerCallback": 0x1400})
    power = forge.create_callback("PowerState")
    forge.register(power, driver.address_of("AcmePowerCallback"), context=0x1234)
    image = forge.build()
    image.write(Path("out"))          # memory.raw, memory.dmp, symbols/, truth.json
    image.write(Path("out"), formats=image.formats)   # and every crash-dump format (dump.FORMATS)

Anomalies are planted with the same calls (``in_callback_list=False``, ``backlink=...``,
``linked=False``...) or, for corruption of the lists themselves, with :meth:`after_linking`.
History is planted the same way: ``register(..., freed=True)``, ``create_callback(...,
deleted=True)`` and :meth:`add_unloaded_driver` leave what Windows leaves when a registration
is undone, an object deleted or a driver unloaded; the blocks are freed through the build's pool
allocator once every list is written (so that they keep stale links, as the kernel leaves them).

``seed`` varies the layout (physical frames, kernel and driver bases, pool placement, noise
contents) but not what is planted.
"""

from typing import Any, Callable, Dict, Iterable, List, Optional

from ..allocators.pool import PoolBlock, PoolKind
from ..kernel.code import ExpectedTransfer, stub
from ..kernel.drivers import DriverObjects
from ..kernel.inverted_table import InvertedFunctionTable
from ..kernel.machine import KernelMachine
from ..kernel.memory_manager import MemoryManager
from ..kernel.modules import ENTRY_ALLOCATED, KERNEL_CODE_SYMBOLS, LoadedModule, ModuleLoader, driver_image, kernel_image
from ..kernel.objects import ObjectManager
from ..kernel.processes import Process, ProcessList
from ..memory.machine import DEFAULT_SEED
from ..memory.physical import masked
from ..plants.callbacks import CallbackObject, CallbackPlanter, Registration
from ..profiles.layout import FORGE_SYMBOLS, KernelLayout
from . import truth
from .output import ForgedImage

SYSTEM_ROOT = "\\SystemRoot\\system32"


class ImageForge:
    """Builds one Windows kernel memory image, step by step."""

    def __init__(self, layout: KernelLayout, memory_size: int = 0, seed: int = DEFAULT_SEED) -> None:
        """``memory_size``: the machine's RAM (frames are scattered over all of it); without it,
        RAM grows as pages are needed. ``seed``: see the module's docstring."""
        self.layout = layout
        self.seed = seed
        self.machine = KernelMachine(layout, memory_size, seed)
        self.loader = ModuleLoader(self.machine)
        symbols = layout.symbols(FORGE_SYMBOLS)
        self.kernel = self.loader.load(
            kernel_image(layout), f"{SYSTEM_ROOT}\\ntoskrnl.exe",
            functions={name: rva for name, rva in symbols.items() if name in KERNEL_CODE_SYMBOLS},
            symbols=layout.symbols(), physical_base=self.machine.plan.kernel_physical,
        )
        self.machine.write_low_stub(self.kernel.base + symbols.get("KiSystemStartup", self.kernel.image.entry_point_rva))
        if layout.build and layout.has_symbol("NtBuildNumber"):
            # nt!NtBuildNumber: the build in the low 16 bits, 0xF000 in the high ones (free build).
            self.machine.space.write(self.kernel.base + layout.symbol("NtBuildNumber"),
                                     (0xF000_0000 | layout.build).to_bytes(4, "little"))
        if layout.has_symbol("MmSystemRangeStart"):
            # Where kernel space starts: readers (Volatility's driverscan) judge pointers by it.
            self.machine.write_pointer(self.kernel.base + layout.symbol("MmSystemRangeStart"), self.machine.plan.system_range_start)
        self.pool = self.machine.install_pool(self.kernel.base)
        self.hal = self.add_driver("hal.dll", path=f"{SYSTEM_ROOT}\\hal.dll", functions={"HalpPowerStub": 0x1200}, exported=("HalpPowerStub",))
        self.objects = ObjectManager(self.machine, self.kernel.base)
        # \Driver, filled with a driver object per loaded driver once the loader entries exist.
        self.drivers = DriverObjects(self.machine, self.objects, self.kernel.base)
        # nt!PsInvertedFunctionTable (x64), written with the module list.
        self.inverted_table = InvertedFunctionTable(self.machine, self.kernel.base)
        # What planted code does, for the ground truth: where each planted routine sends
        # control, and the pointers planted for gadgets that jump through their context.
        self.transfers: Dict[int, ExpectedTransfer] = {}
        self.code_pointers: Dict[int, int] = {}
        # The processes of a booted system (none where the layout cannot describe them).
        self.processes = ProcessList(self.machine, self.objects, self.kernel.base)
        self.processes.boot()
        # MmPhysicalMemoryBlock, MmUnloadedDrivers, sessions: written once the rest is in place.
        self.memory_manager = MemoryManager(self.machine, self.kernel.base)
        self.callbacks = CallbackPlanter(self.machine, self.objects, self.kernel.base)
        # Objects whose registrants are fixed, as the plugin's expected-registrant data says.
        self.expected_registrants: Dict[str, List[str]] = {}
        self._after_linking: List[Callable[["ImageForge"], None]] = []
        self._to_free: List[PoolBlock] = []
        self._exits: List[PoolBlock] = []  # blocks of exited processes, freed last
        # What a scenario wants the ground truth to say beyond the inventory (truth.json "notes").
        self.notes: Dict[str, Any] = {}
        self._built = False

    @classmethod
    def for_profile(cls, profile: str, memory_size: int = 0, seed: int = DEFAULT_SEED) -> "ImageForge":
        """A built-in profile name (see ``layout.BUILTIN_PROFILES``) or the path of a real kernel ISF."""
        return cls(KernelLayout.resolve(profile), memory_size, seed)

    # -- modules -------------------------------------------------------------------------

    def add_driver(
        self,
        name: str,
        functions: Optional[Dict[str, int]] = None,
        exported: Iterable[str] = (),
        path: Optional[str] = None,
        in_module_list: bool = True,
        text_size: int = 0x8000,
        gadgets: Optional[Dict[str, str]] = None,
        loader_entry: str = ENTRY_ALLOCATED,
        driver_object: bool = True,
        inverted_entry: bool = True,
    ) -> LoadedModule:
        """Map a driver image; ``in_module_list=False`` hides it from PsLoadedModuleList.
        ``gadgets``: functions whose code carries a gadget (``code.ARGUMENT_GADGET``, ...). What
        else the loader leaves of it: ``loader_entry`` (``modules.ENTRY_ERASED``: zeroed and freed;
        ``ENTRY_NONE``: a manually mapped image), its driver object, its inverted-table entry."""
        functions = functions or {}
        image = driver_image(name, text_size=text_size, functions=functions, exported=tuple(exported),
                             is_64bit=self.layout.is_64bit, gadgets=gadgets)
        module = self.loader.load(image, path or f"{SYSTEM_ROOT}\\drivers\\{name}", functions, in_module_list=in_module_list)
        module.loader_entry, module.has_driver_object, module.in_inverted_table = loader_entry, driver_object, inverted_entry
        return module

    def add_unloaded_driver(self, name: str, functions: Optional[Dict[str, int]] = None,
                            text_size: int = 0x8000) -> LoadedModule:
        """A driver that was loaded and has been unloaded: routines that pointed into it now
        point into unmapped memory; its loader entry stays in pool, freed."""
        functions = functions or {}
        image = driver_image(name, text_size=text_size, functions=functions, is_64bit=self.layout.is_64bit)
        return self.loader.unload(image, f"{SYSTEM_ROOT}\\drivers\\{name}", functions)

    def allocate_code_outside_modules(self, size: int = 0x200, tag: bytes = b"Hook") -> int:
        """Executable code in non-paged pool, as a rootkit's shellcode: in no module at all."""
        block = self.pool.allocate(size, tag, PoolKind.NONPAGED_EXECUTE, role="shellcode")
        self.machine.space.write(block.body, self._shellcode())
        return block.body

    def allocate_unbacked_code(self) -> int:
        """Executable code in pages of their own, in no module and no pool (memory a rootkit
        maps for itself): the address of its first instruction."""
        page = self.machine.allocate_system_pages(1, executable=True)
        address = page + 0x40
        self.machine.space.write(address, self._shellcode())
        return address

    def _shellcode(self) -> bytes:
        """A rootkit's code: a frame and a return."""
        if self.layout.is_64bit:
            return b"\x48\x83\xec\x28\x90\x90\x48\x83\xc4\x28\xc3"  # sub rsp, 28h; nop; nop; add rsp, 28h; ret
        return b"\x55\x8b\xec\x90\x90\x5d\xc3"  # push ebp; mov ebp, esp; nop; nop; pop ebp; ret

    def allocate_pointer(self, target: int, offset: int, tag: bytes = b"Tabl") -> int:
        """A non-paged pool block holding ``target`` at ``offset`` (a table a gadget jumps
        through): the block's body."""
        block = self.pool.allocate(offset + self.layout.pointer_size, tag, PoolKind.NONPAGED, role="pointer_table")
        self.machine.write_pointer(block.body + offset, target)
        self.code_pointers[masked(block.body + offset)] = target
        return block.body

    def expect_transfer(self, address: int, transfer: ExpectedTransfer) -> None:
        """Record where the code at ``address`` sends control (a gadget found in a module)."""
        self.transfers[masked(address)] = transfer

    def write_stub(self, address: int, target: int, form: str) -> int:
        """Patch a stub that jumps to ``target`` over the code at ``address`` (the padding or
        slack of a mapped module, as EBalloon/Common-Registry does through an MDL); returns
        ``address``."""
        self.machine.space.write(address, stub(self.layout.is_64bit, target, form))
        self.expect_transfer(address, ExpectedTransfer(landing=target))
        return address

    def add_process(self, name: str, pid: int, parent_pid: int, linked: bool = True,
                    session: Optional[int] = None) -> Process:
        """A running process (``_EPROCESS``); ``linked=False`` hides it from the process list."""
        return self.processes.create(name, pid, parent_pid, linked, session)

    def add_exited_process(self, name: str, pid: int, parent_pid: int) -> Process:
        """A process that ran and exited: off the list, its token, object and threads freed once
        every list is written, after the unloaded drivers' objects (so that the frees of its
        threads flush the heap's delay-free list over them, as later frees do)."""
        process, blocks = self.processes.create_exited(name, pid, parent_pid)
        self._exits.extend(blocks)
        return process

    @property
    def unmapped_address(self) -> int:
        return self.machine.plan.unmapped

    # -- callbacks -----------------------------------------------------------------------

    def create_callback(self, name: Optional[str], **options) -> CallbackObject:
        """``ExCreateCallback``; see :meth:`CallbackPlanter.create` for the options."""
        callback = self.callbacks.create(name, **options)
        if callback.deleted:
            self._to_free.extend(callback.kernel_object.blocks)
        return callback

    def swap_routine(self, registration: Registration, routine: int) -> None:
        """Overwrite an existing registration's routine (a hijack): its block keeps the rest."""
        self.callbacks.swap_routine(registration, routine)

    def register(self, callback: Optional[CallbackObject], routine: int, **options) -> Registration:
        """``ExRegisterCallback``; see :meth:`CallbackPlanter.register` for the options."""
        registration = self.callbacks.register(callback, routine, **options)
        if registration.freed:
            self._to_free.append(registration.block)
        return registration

    def point_global(self, global_name: str, callback: Optional[CallbackObject]) -> None:
        """Make ``nt!<global_name>`` point at ``callback`` whatever its name."""
        self.callbacks.point_global(global_name, callback)

    def after_linking(self, mutation: Callable[["ImageForge"], None]) -> None:
        """Run ``mutation`` once every list is written: the place for raw corruption."""
        self._after_linking.append(mutation)

    # -- output --------------------------------------------------------------------------

    def build(self) -> "ForgedImage":
        if self._built:
            raise RuntimeError("an ImageForge builds one image")
        self._built = True
        self._to_free += self.loader.write_module_list(self.kernel.base + self.layout.symbol("PsLoadedModuleList"))
        self.inverted_table.write(self.kernel, self.loader.modules)
        self.drivers.create_all(self.loader.modules)
        for module in self.loader.unloaded:
            if module.name.lower().endswith(".sys"):
                self._to_free += self.drivers.create_deleted(module)
        self._to_free += self._exits
        self.processes.link()
        self.objects.set_type_count("Callback", len(self.callbacks.live_objects))
        self.callbacks.link()
        # What was undone is freed now that its stale links are written, in the order planted.
        for block in self._to_free:
            self.pool.free(block)
        for mutation in self._after_linking:
            mutation(self)
        # Last, so that everything written before keeps its place in memory.
        self.memory_manager.create_sessions(self.processes.processes)
        self.memory_manager.remember_unloaded(self.loader.unloaded)
        self.memory_manager.allocate_physical_memory_block()
        self.pool.finish()
        self.memory_manager.write_physical_memory_block()
        return ForgedImage(self, truth.ground_truth(self))
