"""Kernel layouts: where a given Windows build puts each structure field and global.

A :class:`KernelLayout` is the single source of offsets for everything the forge writes. It is
built either from a built-in profile (JSON tables of facts under ``profiles/``, written by
``tools/extract_profile.py`` from real symbol tables, so the suite runs on a clean clone) or
from a real Volatility 3 ISF, in which case every field and every global lands exactly where
that build has it.
"""

import hashlib
import json
import lzma
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

# Builds of the real ISFs this project is tested against, by PDB GUID. An ISF carries no
# version number; these are the builds the tables' publisher gives (JPCERTCC/Windows-Symbol-
# Tables, copied into ../shared/isf/VERSIONS.md).
KNOWN_BUILDS: Dict[str, int] = {
    "339E74133576439CBCDF7E0229DA3773": 7601,
    "169C65213E3E42DDBEB4E3AC66312B82": 9600,
    "DBBC830E3E9A48FDA25A2144C146930E": 14393,
    "1806D020A6E46538D7AC3325FAC114D8": 17763,
    "DCA4AD4BEEB4746D48F84C0125019E43": 18362,
    "606FF669409B00F7FC8C61A9C1670129": 19041,
    "879AD95F3461091BB6318FA98072AD8E": 20348,
    "0CE4A95C0CD782A7596B034D8648E585": 22000,
}

# Globals the forge places, and kernel routines scenarios register as callbacks.
FORGE_SYMBOLS = (
    "PsLoadedModuleList", "PsActiveProcessHead", "ObpRootDirectoryObject", "ObTypeIndexTable",
    "ObHeaderCookie", "ObpInfoMaskToOffset", "ExCallbackObjectType", "ExpCallbackListHead",
    "ExpCallbackListLock", "ExCbPowerState", "ExCbSetSystemTime", "ExCbSetSystemState",
    "ExCbProcessorAdd", "ExCbPhase1InitComplete", "ExCbEnlightenmentState",
    "ExCbSeImageVerificationDriverInfo", "ExCbSeImageVerificationBlockInfo",
    "KdDebuggerDataBlock", "KdVersionBlock", "NtBuildNumber",
    "IoDriverObjectType", "ObpDirectoryObjectType", "ObpTypeObjectType", "KiSystemStartup", "ExCreateCallback", "ExRegisterCallback",
    "ExUnregisterCallback", "ExNotifyCallback", "ExpInitializeCallbacks",
    # routines registered on the built-in objects of a booted system
    "HvlpPowerStateCallback", "EtwpPowerStateCallback", "HalpPowerStateCallback",
    "PopUmpoMessageCallback", "PopMonitorAlpcCallback", "SshpAlpcMessageCallback",
    "PipCslStateChangeCallback", "PopKsrCallback", "EtwpKsrCallback", "PipKsrCallback", "HalpKsrCallbackRoutine", "ExpMicrocodePowerStateCallback",
    "ExpPowerStateTransitionCallbackForLicensing", "PpmHypervisorEnlightenmentCallback",
    "SepImageVerificationCallbackWorker", "KeRegisterProcessorChangeCallback",
    # the pool allocators' globals (tests/forge/allocators/segment_heap/, .../classic_pool/)
    "ExPoolState", "RtlpHpHeapGlobals", "KiProcessorBlock", "KeNumberProcessors", "PoolVector",
    "NonPagedPoolDescriptor", "ExpNonPagedPoolDescriptor", "ExpPagedPoolDescriptor",
    "ExpNumberOfNonPagedPools", "ExpNumberOfPagedPools", "ExpPoolFlags",
    # the big-page tracker table (allocators/big_pool.py) and the process list (kernel/processes.py)
    "PoolBigPageTable", "PoolBigPageTableSize", "PsInitialSystemProcess",
    # the dispatch routine every driver object's MajorFunction[] starts with (kernel/drivers.py), and
    # where kernel space starts (Volatility's driverscan reads it)
    "IopInvalidDeviceRequest", "MmSystemRangeStart",
    # the kernel's view of RAM (a raw image's size is checked against it) and the unloaded-driver
    # ring Volatility's windows.unloadedmodules reads (kernel/memory_manager.py)
    "MmPhysicalMemoryBlock", "MmUnloadedDrivers", "MmLastUnloadedDriver",
    # the images registered for exception dispatch (kernel/inverted_table.py), and the pointer
    # through which 17763 and later read that table
    "PsInvertedFunctionTable", "RtlpInvertedFunctionTable",
)

SEGMENT_HEAP_FIRST_BUILD = 18362

#: Where the built-in profiles (JSON) live: beside this module.
PROFILE_DIR = Path(__file__).resolve().parent

BUILTIN_PROFILES: Dict[str, str] = {
    "win10": "win10_19041_x64",
    "win7": "win7_7601_x64",
    "win7x86": "win7_7601_x86",
    "win7x86nopae": "win7_7601_x86_nopae",
    "win10x86": "win10_19041_x86",
}

# PDB names of the 32-bit kernels built for PAE paging (ntkrnlpa: uniprocessor, ntkrpamp: MP).
PAE_KERNEL_PDBS = ("ntkrnlpa.pdb", "ntkrpamp.pdb")
MACHINE_I386 = 0x14C
MACHINE_AMD64 = 0x8664


class LayoutError(Exception):
    """The layout lacks a type, field or symbol the forge needs."""


@dataclass(frozen=True)
class FieldSpec:
    """A scalar field resolved to its absolute offset within the outermost structure."""

    offset: int
    size: int
    signed: bool
    bit_position: Optional[int] = None
    bit_length: Optional[int] = None

    def encode_into(self, buffer: bytearray, base: int, value: int) -> None:
        start = base + self.offset
        if self.bit_length is None:
            mask = (1 << (8 * self.size)) - 1
            buffer[start : start + self.size] = (value & mask).to_bytes(self.size, "little")
            return
        current = int.from_bytes(buffer[start : start + self.size], "little")
        mask = ((1 << self.bit_length) - 1) << self.bit_position
        current = (current & ~mask) | ((value << self.bit_position) & mask)
        buffer[start : start + self.size] = current.to_bytes(self.size, "little")


class KernelLayout:
    """Types and global symbol offsets of one kernel build."""

    def __init__(
        self,
        name: str,
        isf: Dict[str, Any],
        build: Optional[int],
        source_path: Optional[Path] = None,
    ) -> None:
        self.name = name
        self.isf = isf
        self.build = build
        self.source_path = source_path
        pdb = isf["metadata"]["windows"]["pdb"]
        self.pdb_name: str = pdb["database"]
        self.guid: str = pdb["GUID"].upper()
        self.age: int = int(pdb["age"])
        self.pointer_size: int = isf["base_types"]["pointer"]["size"]
        # 32-bit kernels come in PAE and non-PAE builds; the PDB name tells them apart.
        self.pae: bool = self.pointer_size == 4 and self.pdb_name.lower() in PAE_KERNEL_PDBS
        self._user_types: Dict[str, Any] = isf["user_types"]
        self._symbols: Dict[str, Any] = isf["symbols"]
        self._field_cache: Dict[Tuple[str, str], FieldSpec] = {}

    # -- construction -------------------------------------------------------------------

    @classmethod
    def builtin(cls, profile: str) -> "KernelLayout":
        """A built-in profile (see ``BUILTIN_PROFILES``) with a synthetic GUID of its own.

        The GUID differs from the real build's so a symbol cache holding the real ISF can never
        be confused with the forge's reduced one.
        """
        if profile not in BUILTIN_PROFILES:
            raise LayoutError(f"unknown built-in profile {profile!r}; known: {sorted(BUILTIN_PROFILES)}")
        table = load_profile(BUILTIN_PROFILES[profile])
        forge = table["metadata"]["forge_profile"]
        pdb = dict(table["metadata"]["windows"]["pdb"])
        pdb.update(GUID=hashlib.md5(f"callbackobjects-forge-{profile}".encode()).hexdigest().upper(), age=1)
        isf = {
            "metadata": {
                "format": table["metadata"].get("format", "6.1.0"),
                "producer": {"name": "callbackobjects-forge", "version": "1.0.0"},
                "windows": {"pdb": pdb},
            },
            "base_types": table["base_types"],
            "user_types": table["user_types"],
            "enums": table["enums"],
            "symbols": {name: {"address": address} for name, address in table["symbols"].items()},
        }
        return cls(profile, isf, forge["build"])

    @classmethod
    def from_isf(cls, path: Path) -> "KernelLayout":
        """The layout of a real kernel symbol table (``.json`` or ``.json.xz``)."""
        path = Path(path)
        opener = lzma.open if path.suffix == ".xz" else open
        with opener(path, "rt") as handle:
            isf = json.load(handle)
        guid = isf["metadata"]["windows"]["pdb"]["GUID"].upper()
        return cls(f"isf-{guid[:8].lower()}", isf, KNOWN_BUILDS.get(guid), source_path=path)

    @classmethod
    def resolve(cls, profile: str) -> "KernelLayout":
        """A built-in profile name, or the path of a real ISF."""
        if profile in BUILTIN_PROFILES:
            return cls.builtin(profile)
        path = Path(profile)
        if not path.exists():
            raise LayoutError(f"{profile!r} is neither a built-in profile ({sorted(BUILTIN_PROFILES)}) nor an ISF file")
        return cls.from_isf(path)

    # -- version features ----------------------------------------------------------------

    @property
    def is_64bit(self) -> bool:
        return self.pointer_size == 8

    @property
    def has_callback_list(self) -> bool:
        """Windows 8.1 and later link every callback object into ExpCallbackListHead."""
        return self.has_symbol("ExpCallbackListHead")

    @property
    def encodes_type_index(self) -> bool:
        """Windows 10 and later XOR the object header's TypeIndex with ObHeaderCookie."""
        return self.has_symbol("ObHeaderCookie")

    @property
    def nt_version(self) -> Tuple[int, int]:
        if self.encodes_type_index:
            return (10, 0)
        if self.has_callback_list:
            return (6, 3)
        return (6, 1)

    @property
    def protects_object_pool_tags(self) -> bool:
        """Windows 7 and older set the protected bit (0x80) in object pool tags."""
        return self.nt_version <= (6, 1)

    @property
    def uses_segment_heap(self) -> bool:
        """Windows 10 1903 (build 18362) and later allocate kernel pool from the segment heap
        (Bayet & Fariello, "Scoop the Windows 10 pool!", SSTIC 2020; ../shared/isf/VERSIONS.md).
        17763 already has the heap's types (and ``ExPoolState``) but still the classic pool, and
        18362 still has the classic pool's globals: the build decides. A table of unknown build
        counts as segment heap when it has ``ExPoolState`` and no classic ``PoolVector``."""
        if self.build is not None:
            return self.build >= SEGMENT_HEAP_FIRST_BUILD
        return self.has_symbol("ExPoolState") and not self.has_symbol("PoolVector")

    @property
    def module_entry_type(self) -> str:
        return "_KLDR_DATA_TABLE_ENTRY" if self.has_type("_KLDR_DATA_TABLE_ENTRY") else "_LDR_DATA_TABLE_ENTRY"

    # -- lookups -------------------------------------------------------------------------

    def has_type(self, name: str) -> bool:
        return name in self._user_types

    def has_symbol(self, name: str) -> bool:
        return name in self._symbols

    def symbol(self, name: str) -> int:
        try:
            return self._symbols[name]["address"]
        except KeyError:
            raise LayoutError(f"{self.name}: no symbol {name}") from None

    def symbols(self, names: Optional[Iterable[str]] = None) -> Dict[str, int]:
        """Symbol offsets, all of them or those of ``names`` the table has."""
        wanted = self._symbols if names is None else [name for name in names if name in self._symbols]
        return {name: self._symbols[name]["address"] for name in wanted if "address" in self._symbols[name]}

    def size_of(self, type_name: str) -> int:
        try:
            return self._user_types[type_name]["size"]
        except KeyError:
            raise LayoutError(f"{self.name}: no type {type_name}") from None

    def enum_value(self, enum_name: str, constant: str) -> Optional[int]:
        """A constant of one of the table's enumerations, None where the table lacks it."""
        return self.isf.get("enums", {}).get(enum_name, {}).get("constants", {}).get(constant)

    def has_field(self, type_name: str, field: str) -> bool:
        return self.has_type(type_name) and field in self._user_types[type_name]["fields"]

    def offset_of(self, type_name: str, path: str) -> int:
        """Offset of a (possibly nested, dotted) member, scalar or not."""
        offset, _ = self._walk(type_name, path)
        return offset

    def field(self, type_name: str, path: str) -> FieldSpec:
        """A scalar member, e.g. ``field("_KLDR_DATA_TABLE_ENTRY", "BaseDllName.Length")``."""
        key = (type_name, path)
        if key not in self._field_cache:
            offset, type_desc = self._walk(type_name, path)
            self._field_cache[key] = self._scalar(offset, type_desc, f"{type_name}.{path}")
        return self._field_cache[key]

    def array_count(self, type_name: str, path: str) -> int:
        """The number of elements of an array member, e.g. ``_DRIVER_OBJECT.MajorFunction``."""
        _, type_desc = self._walk(type_name, path)
        if type_desc.get("kind") != "array":
            raise LayoutError(f"{self.name}: {type_name}.{path} is not an array")
        return int(type_desc["count"])

    def _walk(self, type_name: str, path: str) -> Tuple[int, Dict[str, Any]]:
        offset = 0
        current = {"kind": "struct", "name": type_name}
        for part in path.split("."):
            if current.get("kind") not in ("struct", "union", "class"):
                raise LayoutError(f"{self.name}: {type_name}.{path}: {part} is not inside a structure")
            fields = self._user_types.get(current["name"], {}).get("fields", {})
            if part not in fields:
                raise LayoutError(f"{self.name}: no field {current['name']}.{part}")
            offset += fields[part]["offset"]
            current = fields[part]["type"]
        return offset, current

    def _scalar(self, offset: int, type_desc: Dict[str, Any], label: str) -> FieldSpec:
        kind = type_desc["kind"]
        if kind == "pointer":
            return FieldSpec(offset, self.pointer_size, False)
        if kind == "base":
            base = self.isf["base_types"][type_desc["name"]]
            return FieldSpec(offset, base["size"], bool(base["signed"]))
        if kind == "enum":
            enum = self.isf["enums"][type_desc["name"]]
            base = self.isf["base_types"][enum["base"]]
            return FieldSpec(offset, base["size"], bool(base["signed"]))
        if kind == "bitfield":
            inner = self._scalar(offset, type_desc["type"], label)
            return FieldSpec(offset, inner.size, inner.signed, type_desc["bit_position"], type_desc["bit_length"])
        raise LayoutError(f"{self.name}: {label} is a {kind}, not a scalar")

    # -- output --------------------------------------------------------------------------

    def isf_bytes(self) -> bytes:
        """The symbol table to hand to Volatility, xz-compressed as Volatility stores them."""
        return lzma.compress(json.dumps(self.isf).encode(), preset=1)

    def pack(self, type_name: str, values: Dict[str, int], size: Optional[int] = None) -> bytes:
        """A structure image with the given scalar members set and everything else zero."""
        buffer = bytearray(size if size is not None else self.size_of(type_name))
        for path, value in values.items():
            self.field(type_name, path).encode_into(buffer, 0, value)
        return bytes(buffer)


def load_profile(name: str) -> Dict[str, Any]:
    """A built-in profile's JSON table (``profiles/NAME.json``).

    A profile may be a variant of another: ``{"based_on": "other", "metadata": {...}}`` takes
    every table of ``other`` and overrides its PDB record and profile metadata (the non-PAE
    Windows 7 x86 kernel has the PAE one's structures under another PDB name).
    """
    path = PROFILE_DIR / f"{name}.json"
    if not path.exists():
        raise LayoutError(f"no built-in profile table {path}")
    table = json.loads(path.read_text())
    base_name = table.pop("based_on", None)
    if base_name is None:
        return table
    base = load_profile(base_name)
    metadata = json.loads(json.dumps(base["metadata"]))
    variant = table.get("metadata", {})
    metadata["forge_profile"].update(variant.get("forge_profile", {}))
    metadata["windows"]["pdb"].update(variant.get("windows", {}).get("pdb", {}))
    return dict(base, metadata=metadata)


def pointer_format(pointer_size: int) -> str:
    return "<Q" if pointer_size == 8 else "<I"


def pack_pointer(value: int, pointer_size: int) -> bytes:
    return struct.pack(pointer_format(pointer_size), value & ((1 << (8 * pointer_size)) - 1))
