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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from . import dump, truth
from .callbacks import CallbackObject, CallbackPlanter, Registration
from .drivers import DriverObjects
from .layout import FORGE_SYMBOLS, KernelLayout
from .kernel_machine import KernelMachine
from .machine import DEFAULT_SEED
from .memory import canonical
from .modules import KERNEL_CODE_SYMBOLS, LoadedModule, ModuleLoader, driver_image, kernel_image
from .objects import ObjectManager
from .pool import PoolBlock, PoolKind
from .processes import Process, ProcessList

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
        # The processes of a booted system (none where the layout cannot describe them).
        self.processes = ProcessList(self.machine, self.objects, self.kernel.base)
        self.processes.boot()
        self.callbacks = CallbackPlanter(self.machine, self.objects, self.kernel.base)
        # Objects whose registrants are fixed, as the plugin's expected-registrant data says.
        self.expected_registrants: Dict[str, List[str]] = {}
        self._after_linking: List[Callable[["ImageForge"], None]] = []
        self._to_free: List[PoolBlock] = []
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
    ) -> LoadedModule:
        """Map a driver image; ``in_module_list=False`` hides it from PsLoadedModuleList."""
        functions = functions or {}
        image = driver_image(name, text_size=text_size, functions=functions, exported=tuple(exported),
                             is_64bit=self.layout.is_64bit)
        return self.loader.load(image, path or f"{SYSTEM_ROOT}\\drivers\\{name}", functions, in_module_list=in_module_list)

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
        if self.layout.is_64bit:
            code = b"\x48\x83\xec\x28\x90\x90\x48\x83\xc4\x28\xc3"  # sub rsp, 28h; nop; nop; add rsp, 28h; ret
        else:
            code = b"\x55\x8b\xec\x90\x90\x5d\xc3"  # push ebp; mov ebp, esp; nop; nop; pop ebp; ret
        self.machine.space.write(block.body, code)
        return block.body

    def add_process(self, name: str, pid: int, parent_pid: int, linked: bool = True) -> Process:
        """A running process (``_EPROCESS``); ``linked=False`` hides it from the process list."""
        return self.processes.create(name, pid, parent_pid, linked)

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
        self.drivers.create_all(self.loader.modules)
        self.processes.link()
        self.objects.set_type_count("Callback", len(self.callbacks.live_objects))
        self.callbacks.link()
        # What was undone is freed now that its stale links are written, in the order planted.
        for block in self._to_free:
            self.pool.free(block)
        for mutation in self._after_linking:
            mutation(self)
        self.pool.finish()
        return ForgedImage(self, truth.ground_truth(self))


def truth_text(truth: Dict[str, Any]) -> str:
    """truth.json: indented, but one line per pool block (tens of thousands on ``scale``)."""
    text = json.dumps(dict(truth, blocks=[]), indent=1)
    blocks = ",\n  ".join(json.dumps(block, separators=(",", ":")) for block in truth["blocks"])
    return text.replace('"blocks": []', '"blocks": [\n  ' + blocks + "\n ]" if blocks else '"blocks": []', 1)


@dataclass
class ForgedImage:
    """A built image: its ground truth, and writers for every output format of ``dump.FORMATS``."""

    forge: ImageForge
    truth: dict

    RAW_NAME = dump.FORMATS["raw"].file_name
    DUMP_NAME = dump.FORMATS["dump"].file_name
    TRUTH_NAME = "truth.json"
    SYMBOLS_DIR = "symbols"

    @property
    def formats(self) -> Tuple[str, ...]:
        """The formats this image can be written in (the debugger engine's exist for x64 only)."""
        return dump.formats_for(self.forge.layout.is_64bit)

    def machine_facts(self) -> dump.MachineFacts:
        """What a crash dump's first header says about this machine."""
        forge = self.forge
        layout = forge.layout

        def kernel_address(name: str) -> int:
            return canonical(forge.kernel.base + layout.symbol(name)) if layout.has_symbol(name) else 0

        return dump.MachineFacts(
            is_64bit=layout.is_64bit, pae=layout.pae, dtb=forge.machine.plan.dtb, build=layout.build or 0,
            ps_loaded_module_list=kernel_address("PsLoadedModuleList"),
            ps_active_process_head=kernel_address("PsActiveProcessHead"),
            kd_debugger_data_block=kernel_address("KdDebuggerDataBlock"),
        )

    def write_format(self, name: str, path: Path) -> Path:
        """Write the memory in format ``name`` (a key of ``dump.FORMATS``) to ``path``."""
        if name not in dump.FORMATS:
            raise ValueError(f"unknown format {name!r}; known: {', '.join(dump.FORMATS)}")
        fmt = dump.FORMATS[name]
        if fmt.dump_type is None:
            dump.write_raw(self.forge.machine.physical, path)
        else:
            dump.write_crash_dump(self.forge.machine.physical, path, self.machine_facts(), fmt)
        return path

    def write_symbols(self, directory: Path) -> Path:
        """The kernel's symbol table where ``vol -s DIR`` looks for it."""
        layout = self.forge.layout
        target = directory / "windows" / layout.pdb_name / f"{layout.guid}-{layout.age}.json.xz"
        target.parent.mkdir(parents=True, exist_ok=True)
        if layout.source_path is not None and layout.source_path.suffix == ".xz":
            target.write_bytes(layout.source_path.read_bytes())
        else:
            target.write_bytes(layout.isf_bytes())
        return directory

    def write(self, out_dir: Path, formats: Iterable[str] = dump.DEFAULT_FORMATS) -> Dict[str, Path]:
        """Write ``symbols/``, ``truth.json`` and the image in each of ``formats`` (names of
        ``dump.FORMATS``: ``raw``, ``dump``, ``bitmap``, ``live``, ``kernel``, ``kernel-user``,
        ``complete``; ``self.formats`` lists those this image's architecture has). Returns the
        paths by format name, plus ``symbols`` and ``truth``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"symbols": self.write_symbols(out_dir / self.SYMBOLS_DIR), "truth": out_dir / self.TRUTH_NAME}
        paths["truth"].write_text(truth_text(self.truth))
        for name in formats:
            paths[name] = self.write_format(name, out_dir / dump.FORMATS[name].file_name)
        return paths
