"""Write a built-in forge profile (JSON data) from a kernel symbol table.

The forge's built-in profiles are tables of facts (structure layouts and global symbol offsets)
kept in ``tests/forge/profiles/*.json`` so that the suite runs on a clean clone without the
real symbol tables. This tool writes them; its output is committed, its input is not.

From a real Volatility 3 ISF (the x64 profiles)::

    python -m tests.forge.tools.extract_profile ISF.json.xz win10_19041_x64 --build 19041

From Volatility 2's vtypes overlay, generated from the real PDB by Volatility 2's authors (the
x86 profiles: no x86 ISF is at hand). Such an overlay has no symbols: the global symbol RVAs
are invented, plausible placements, taken from ``--symbols`` (a JSON map, or an earlier
profile) and marked as invented in the output's metadata::

    python -m tests.forge.tools.extract_profile --vtypes win7_sp1_x86_vtypes.py win7_7601_x86 \\
        --build 7601 --nt-version 6.1 --pdb-name ntkrpamp.pdb \\
        --symbols tests/forge/profiles/win7_7601_x86.json \\
        --source volatilityfoundation/volatility@<commit>:volatility/plugins/overlays/windows/win7_sp1_x86_vtypes.py

Only the types and fields the forge writes (and the ones Volatility's Windows symbol class
insists on) are kept; types embedded by value are kept whole; pointers to types left out
become ``void *``. The JSON is written one type per line so that a regeneration diffs well.
"""

import argparse
import ast
import json
import lzma
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from ..profiles.layout import FORGE_SYMBOLS, MACHINE_AMD64, MACHINE_I386, PROFILE_DIR

# Types the forge writes, with the fields it needs; None keeps every field. A type absent from
# a build (the segment heap before 18362, PPNxPagedLookasideList before 8) is simply skipped.
FORGED_FIELDS: Dict[str, Optional[List[str]]] = {
    "_LIST_ENTRY": None,
    "_SINGLE_LIST_ENTRY": None,
    "_UNICODE_STRING": None,
    "_QUAD": None,
    "_EX_PUSH_LOCK": None,
    "_KSYSTEM_TIME": None,
    "_EX_FAST_REF": None,
    "_KLDR_DATA_TABLE_ENTRY": [
        "InLoadOrderLinks", "ExceptionTable", "ExceptionTableSize", "DllBase", "EntryPoint",
        "SizeOfImage", "FullDllName", "BaseDllName", "Flags", "LoadCount", "CheckSum",
        "TimeDateStamp",
    ],
    "_LDR_DATA_TABLE_ENTRY": [
        "InLoadOrderLinks", "InMemoryOrderLinks", "InInitializationOrderLinks", "DllBase",
        "EntryPoint", "SizeOfImage", "FullDllName", "BaseDllName", "Flags", "LoadCount", "CheckSum",
        "TimeDateStamp",
    ],
    "_OBJECT_HEADER": [
        "PointerCount", "HandleCount", "Lock", "TypeIndex", "TraceFlags", "InfoMask", "Flags",
        "ObjectCreateInfo", "QuotaBlockCharged", "SecurityDescriptor", "Body",
    ],
    "_OBJECT_HEADER_NAME_INFO": None,
    "_OBJECT_HEADER_CREATOR_INFO": None,
    "_OBJECT_HEADER_QUOTA_INFO": None,
    "_OBJECT_DIRECTORY": ["HashBuckets", "Lock", "DeviceMap", "ShadowDirectory", "SessionId", "Flags"],
    "_OBJECT_DIRECTORY_ENTRY": None,
    "_OBJECT_TYPE": [
        "TypeList", "Name", "DefaultObject", "Index", "TotalNumberOfObjects",
        "TotalNumberOfHandles", "HighWaterNumberOfObjects", "HighWaterNumberOfHandles",
        "TypeLock", "Key", "CallbackList",
    ],
    "_POOL_HEADER": None,
    "_POOL_TRACKER_BIG_PAGES": None,
    "_KUSER_SHARED_DATA": [
        "NtBuildNumber", "NtProductType", "ProductTypeIsValid", "NtMajorVersion",
        "NtMinorVersion", "NtSystemRoot", "KdDebuggerEnabled", "SystemTime",
    ],
    "_DRIVER_OBJECT": [
        "Type", "Size", "DeviceObject", "Flags", "DriverStart", "DriverSize", "DriverSection",
        "DriverExtension", "DriverName", "HardwareDatabase", "FastIoDispatch", "DriverInit",
        "DriverStartIo", "DriverUnload", "MajorFunction",
    ],
    # Allocated right behind its driver object (tests/forge/kernel/drivers.py); Volatility's
    # driverscan reads ServiceKeyName.
    "_DRIVER_EXTENSION": ["DriverObject", "AddDevice", "Count", "ServiceKeyName"],
    "_DEVICE_OBJECT": ["Type", "Size", "ReferenceCount", "DriverObject", "NextDevice", "AttachedDevice", "DeviceType"],
    "_IMAGE_DOS_HEADER": None,
    # Members Volatility's version heuristics (symbols/windows/versions.py) look at, then the
    # process list's (tests/forge/kernel/processes.py; MemProcFS reads these offsets from its symbols,
    # vmm/vmmwin.c VmmWinProcess_OffsetLocatorSYMSERV). Pcb embeds _KPROCESS (kept whole).
    "_EPROCESS": [
        "Pcb", "UniqueProcessId", "ActiveProcessLinks", "ImageFileName", "KeepAliveCounter",
        "ControlFlowGuardEnabled", "ProcessFirstResume", "HighMemoryPriority", "VmProcessorHost",
        "VdmObjects", "TrustletIdentity", "TimerResolutionIgnore", "VmProcessorHostTransition",
        "PaeTop", "IdealProcessorAssignmentBlock", "MmSlabIdentity",
        "EnableProcessImpersonationLogging", "UmsScheduledThreads", "QuotaUsage", "WnfContext",
        "InheritedFromUniqueProcessId", "Peb", "ObjectTable", "VadRoot", "SeAuditProcessCreationInfo",
        # the session a process belongs to (kernel/memory_manager.py): Volatility's windows.modules
        # --dump and modscan --dump read Session->SessionId to pick a process layer per session
        "Session", "SessionProcessLinks",
        # what Volatility's _EPROCESS.is_valid checks (windows.poolscanner, psscan) and psscan's
        # row reads: a creation time, the exit time and the thread list (an exited process's freed
        # block is a psscan hit, tests/forge/kernel/processes.py)
        "CreateTime", "ExitTime", "ThreadListHead", "ActiveThreads",
    ],
    # TableCode: Volatility's windows.handles reads it (a process without a table has none)
    "_HANDLE_TABLE": ["HandleCount", "TableCode"],
    # What Volatility's _ETHREAD.is_valid reads of every Thre-tagged block windows.poolscanner
    # finds (an exited process's freed thread blocks, kernel/processes.py): its client id and times.
    "_ETHREAD": ["Cid", "CreateTime", "ExitTime"],
    # The memory manager's globals the forge writes (kernel/memory_manager.py).
    "_PHYSICAL_MEMORY_DESCRIPTOR": None,
    "_PHYSICAL_MEMORY_RUN": None,
    "_MM_SESSION_SPACE": ["ReferenceCount", "SessionId", "ProcessList"],
    # Classic pool (tests/forge/allocators/classic_pool/): processor blocks and their lookaside lists,
    # pool descriptors, interlocked singly linked lists.
    "_KPCR": ["Self", "CurrentPrcb", "SelfPcr", "Prcb", "PrcbData", "MajorVersion", "MinorVersion"],
    "_KPRCB": ["Number", "PendingTickFlags", "PPNPagedLookasideList", "PPPagedLookasideList", "PPNxPagedLookasideList"],
    "_GENERAL_LOOKASIDE_POOL": None,
    "_SLIST_HEADER": None,
    "_POOL_DESCRIPTOR": [
        "PoolType", "PoolIndex", "RunningAllocs", "RunningDeAllocs", "RunningDeallocs", "TotalPages",
        "TotalBytes", "PendingFrees", "PendingFreeDepth", "ListHeads",
    ],
    # Segment heap (tests/forge/allocators/segment_heap/), from nt!ExPoolState down to the block bitmap.
    "_EX_POOL_HEAP_MANAGER_STATE": ["HeapManager", "NumberOfPools", "PoolNode", "SpecialHeaps"],
    "_RTLP_HP_HEAP_MANAGER": ["Globals"],
    "_RTLP_HP_HEAP_GLOBALS": ["HeapKey", "LfhKey"],
    "_EX_HEAP_POOL_NODE": ["Heaps"],
    "_SEGMENT_HEAP": ["Signature", "GlobalFlags", "SegContexts", "VsContext", "LfhContext"],
    "_HEAP_SEG_CONTEXT": [
        "SegmentMask", "UnitShift", "PagesPerUnitShift", "FirstDescriptorIndex", "MaxAllocationSize",
        "LfhContext", "VsContext", "Heap", "SegmentListHead", "SegmentCount",
    ],
    "_HEAP_VS_CONTEXT": ["SubsegmentList", "FreeChunkTree", "DelayFreeContext", "TotalCommittedUnits", "FreeCommittedUnits"],
    "_HEAP_LFH_CONTEXT": ["Buckets", "MaxAffinity"],
    "_HEAP_LFH_BUCKET": ["State", "TotalBlockCount", "TotalSubsegmentCount"],
    "_HEAP_LFH_SUBSEGMENT_OWNER": None,
    "_HEAP_PAGE_SEGMENT": None,
    "_HEAP_PAGE_RANGE_DESCRIPTOR": None,
    "_HEAP_LFH_SUBSEGMENT": None,
    "_HEAP_LFH_SUBSEGMENT_ENCODED_OFFSETS": None,
    "_HEAP_VS_SUBSEGMENT": None,
    "_HEAP_VS_CHUNK_HEADER": None,
    "_HEAP_VS_CHUNK_HEADER_SIZE": None,
    "_HEAP_VS_CHUNK_FREE_HEADER": None,
    "_HEAP_VS_DELAY_FREE_CONTEXT": None,
    "_RTL_BALANCED_NODE": None,
    "_RTL_RB_TREE": None,
    # The images registered for exception dispatch (tests/forge/kernel/inverted_table.py); absent from 7601.
    "_INVERTED_FUNCTION_TABLE": None,
    "_INVERTED_FUNCTION_TABLE_ENTRY": None,
    "_IMAGE_RUNTIME_FUNCTION_ENTRY": None,
}

# Enumerations whose constants the forge writes into members typed as plain integers (a
# dispatcher header's Type is a UCHAR holding a _KOBJECTS value).
FORGED_ENUMS = ("_KOBJECTS",)

# Types Volatility's WindowsKernelIntermedSymbols requires to exist; the forge never writes
# them, so they keep their real size and no fields.
REQUIRED_BY_VOLATILITY = [
    "_ETHREAD", "_KTHREAD", "_ERESOURCE", "_TOKEN", "_FILE_OBJECT", "_CM_KEY_BODY", "_CMHIVE",
    "_CM_KEY_NODE", "_CM_KEY_VALUE", "_HMAP_ENTRY", "_MMVAD_SHORT", "_MMVAD", "_KMUTANT",
    "_OBJECT_SYMBOLIC_LINK", "_CONTROL_AREA", "_SHARED_CACHE_MAP", "_VACB", "_KTIMER",
    "_KPROCESS",
]

# Volatility 2 names an enumeration nowhere; these are the kernel's names for the ones kept.
VTYPES_ENUM_NAMES = {
    ("_KUSER_SHARED_DATA", "NtProductType"): "_NT_PRODUCT_TYPE",
    ("_GENERAL_LOOKASIDE_POOL", "Type"): "_POOL_TYPE",
    ("_POOL_DESCRIPTOR", "PoolType"): "_POOL_TYPE",
}

# The base types of a 32-bit Windows kernel ISF (as Volatility 3 spells them).
X86_BASE_TYPES: Dict[str, Dict[str, Any]] = {
    "char": {"endian": "little", "kind": "char", "signed": True, "size": 1},
    "double": {"endian": "little", "kind": "float", "signed": True, "size": 8},
    "float": {"endian": "little", "kind": "float", "signed": True, "size": 4},
    "int": {"endian": "little", "kind": "int", "signed": True, "size": 4},
    "long": {"endian": "little", "kind": "int", "signed": True, "size": 4},
    "long long": {"endian": "little", "kind": "int", "signed": True, "size": 8},
    "pointer": {"endian": "little", "kind": "int", "signed": False, "size": 4},
    "short": {"endian": "little", "kind": "int", "signed": True, "size": 2},
    "unsigned char": {"endian": "little", "kind": "char", "signed": False, "size": 1},
    "unsigned int": {"endian": "little", "kind": "int", "signed": False, "size": 4},
    "unsigned long": {"endian": "little", "kind": "int", "signed": False, "size": 4},
    "unsigned long long": {"endian": "little", "kind": "int", "signed": False, "size": 8},
    "unsigned short": {"endian": "little", "kind": "int", "signed": False, "size": 2},
    "void": {"endian": "little", "kind": "void", "signed": True, "size": 0},
    "wchar": {"endian": "little", "kind": "int", "signed": True, "size": 2},
}

INVENTED_SYMBOLS_WARNING = (
    "The global symbol RVAs of this profile are NOT facts: they are only knowable from the real "
    "PDB, which is not at hand. They are plausible placements (code in code-like ranges, data in a "
    "data-like range, within an image of the real kernel's size) chosen so that the forge can "
    "synthesise a consistent image. Structure layouts are facts (from the source named above)."
)


# -- reading ------------------------------------------------------------------------------

def load_isf(path: Path) -> Dict[str, Any]:
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt") as handle:
        return json.load(handle)


def _literal(node: ast.AST) -> Any:
    """A Python literal of a vtypes file, where ``dict(a=1)`` calls count as literals too.

    The overlay is read as data, never executed."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {keyword.arg: _literal(keyword.value) for keyword in node.keywords}
    if isinstance(node, ast.Dict):
        return {_literal(key): _literal(value) for key, value in zip(node.keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(element) for element in node.elts]
    return ast.literal_eval(node)


def load_vtypes(path: Path) -> Dict[str, Any]:
    """The first ``name = {...}`` table of a Volatility 2 vtypes overlay."""
    tree = ast.parse(Path(path).read_text())
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Dict):
            return _literal(statement.value)
    raise ValueError(f"{path}: no vtypes table found")


def _vtype_desc(desc: List[Any], types: Dict[str, Any], enums: Dict[str, Any], owner: str, field: str) -> Dict[str, Any]:
    """A Volatility 2 type descriptor as a Volatility 3 ISF one."""
    kind = desc[0]
    if kind == "pointer":
        return {"kind": "pointer", "subtype": _vtype_desc(desc[1], types, enums, owner, field)}
    if kind == "array":
        return {"kind": "array", "count": desc[1], "subtype": _vtype_desc(desc[2], types, enums, owner, field)}
    if kind == "BitField":
        spec = desc[1]
        return {"kind": "bitfield", "bit_position": spec["start_bit"], "bit_length": spec["end_bit"] - spec["start_bit"],
                "type": {"kind": "base", "name": spec["native_type"]}}
    if kind == "Enumeration":
        spec = desc[1]
        name = VTYPES_ENUM_NAMES.get((owner, field), f"{owner}_{field}")
        enums[name] = {"base": spec["target"], "size": X86_BASE_TYPES[spec["target"]]["size"],
                       "constants": {label: value for value, label in sorted(spec["choices"].items())}}
        return {"kind": "enum", "name": name}
    if kind in types:
        return {"kind": "struct", "name": kind}
    if kind in X86_BASE_TYPES:
        return {"kind": "base", "name": kind}
    return {"kind": "base", "name": "void"}  # a name the overlay never defines


def vtypes_to_isf(vtypes: Dict[str, Any]) -> Dict[str, Any]:
    """A 32-bit Volatility 2 vtypes table as an ISF body (base types, user types, enums).

    Volatility 2 does not tell structures from unions; both become ``struct``, which reads the
    same (every member has its own offset)."""
    enums: Dict[str, Any] = {}
    user_types = {}
    for name, (size, fields) in vtypes.items():
        user_types[name] = {
            "kind": "struct", "size": size,
            "fields": {field: {"offset": offset, "type": _vtype_desc(desc, vtypes, enums, name, field)}
                       for field, (offset, desc) in fields.items()},
        }
    return {"base_types": X86_BASE_TYPES, "user_types": user_types, "enums": enums, "symbols": {}}


# -- selecting ----------------------------------------------------------------------------

def _referenced_user_types(type_desc: Dict[str, Any], embedded: Set[str], enums: Set[str]) -> None:
    """Collect types a field embeds by value (they must be kept whole) and enums it uses."""
    kind = type_desc.get("kind")
    if kind in ("struct", "union", "class"):
        embedded.add(type_desc["name"])
    elif kind == "enum":
        enums.add(type_desc["name"])
    elif kind == "array":
        _referenced_user_types(type_desc["subtype"], embedded, enums)
    elif kind == "bitfield":
        _referenced_user_types(type_desc["type"], embedded, enums)


def _void_dangling_pointers(type_desc: Dict[str, Any], kept: Set[str]) -> Dict[str, Any]:
    kind = type_desc.get("kind")
    if kind == "pointer":
        sub = type_desc["subtype"]
        if sub.get("kind") in ("struct", "union", "class", "enum") and sub["name"] not in kept:
            return {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}
        if sub.get("kind") in ("pointer", "array"):
            return {"kind": "pointer", "subtype": _void_dangling_pointers(sub, kept)}
        return type_desc
    if kind == "array":
        return dict(type_desc, subtype=_void_dangling_pointers(type_desc["subtype"], kept))
    return type_desc


def extract(isf: Dict[str, Any], symbols: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """The forge's share of ``isf``; ``symbols`` replaces the ISF's (which a vtypes table lacks)."""
    user_types = isf["user_types"]
    selected: Dict[str, Dict[str, Any]] = {}
    embedded: Set[str] = set()
    enums: Set[str] = set()

    for name, wanted in FORGED_FIELDS.items():
        if name not in user_types:
            continue
        source = user_types[name]
        fields = {field: desc for field, desc in source["fields"].items() if wanted is None or field in wanted}
        selected[name] = {"kind": source["kind"], "size": source["size"], "fields": fields}
        for desc in fields.values():
            _referenced_user_types(desc["type"], embedded, enums)

    # Embedded types are kept whole, transitively.
    pending = sorted(embedded - set(selected))
    while pending:
        name = pending.pop()
        source = user_types[name]
        selected[name] = {"kind": source["kind"], "size": source["size"], "fields": dict(source["fields"])}
        more: Set[str] = set()
        for desc in source["fields"].values():
            _referenced_user_types(desc["type"], more, enums)
        pending.extend(sorted(more - set(selected) - set(pending)))

    for name in REQUIRED_BY_VOLATILITY:
        if name in user_types and name not in selected:
            selected[name] = {"kind": user_types[name]["kind"], "size": user_types[name]["size"], "fields": {}}

    kept = set(selected)
    for body in selected.values():
        for field, desc in body["fields"].items():
            body["fields"][field] = dict(desc, type=_void_dangling_pointers(desc["type"], kept))

    if symbols is None:
        symbols = {name: isf["symbols"][name]["address"] for name in FORGE_SYMBOLS
                   if name in isf["symbols"] and "address" in isf["symbols"][name]}
    return {
        "base_types": isf["base_types"],
        "user_types": dict(sorted(selected.items())),
        "enums": {name: isf["enums"][name] for name in sorted(enums | set(FORGED_ENUMS) & set(isf["enums"]))},
        "symbols": dict(sorted(symbols.items())),
    }


# -- writing ------------------------------------------------------------------------------

def render(profile: Dict[str, Any]) -> str:
    """JSON with one entry of each top-level table per line: small diffs on regeneration."""
    lines = ["{"]
    sections = list(profile.items())
    for index, (section, value) in enumerate(sections):
        closing = "," if index + 1 < len(sections) else ""
        if section == "metadata" or not isinstance(value, dict) or not value:
            lines.append(f" {json.dumps(section)}: {json.dumps(value, sort_keys=True)}{closing}")
            continue
        lines.append(f" {json.dumps(section)}: {{")
        items = sorted(value.items())
        for position, (key, entry) in enumerate(items):
            comma = "," if position + 1 < len(items) else ""
            lines.append(f"  {json.dumps(key)}: {json.dumps(entry, sort_keys=True)}{comma}")
        lines.append(f" }}{closing}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def profile_document(table: Dict[str, Any], build: int, nt_version: str, pdb: Dict[str, Any],
                     source: Dict[str, Any], symbols_invented: bool) -> Dict[str, Any]:
    major, minor = (int(part) for part in nt_version.split("."))
    pointer_size = table["base_types"]["pointer"]["size"]
    forge = {
        "build": build,
        "nt_version": [major, minor],
        "architecture": "x64" if pointer_size == 8 else "x86",
        "source": source,
        "symbols_invented": symbols_invented,
        "generated_by": "tests/forge/tools/extract_profile.py (do not edit by hand)",
    }
    if symbols_invented:
        forge["warning"] = INVENTED_SYMBOLS_WARNING
    metadata = {"format": "6.1.0", "forge_profile": forge, "windows": {"pdb": pdb}}
    return dict(metadata=metadata, **table)


def _symbols_argument(path: Path) -> Dict[str, int]:
    data = json.loads(Path(path).read_text())
    return dict(data.get("symbols", data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a Volatility 3 ISF (.json or .json.xz), or with --vtypes a Volatility 2 overlay")
    parser.add_argument("name", help="profile file name under tests/forge/profiles/ (without .json)")
    parser.add_argument("--build", type=int, required=True)
    parser.add_argument("--nt-version", default="10.0", help="NtMajorVersion.NtMinorVersion")
    parser.add_argument("--vtypes", action="store_true", help="the source is a 32-bit Volatility 2 vtypes overlay")
    parser.add_argument("--pdb-name", help="with --vtypes: the kernel's PDB name (ntkrpamp.pdb, ntkrnlmp.pdb)")
    parser.add_argument("--symbols", type=Path, help="with --vtypes: invented symbol RVAs (JSON map or a profile)")
    parser.add_argument("--source-name", help="with --vtypes: where the overlay comes from (repository@commit:path)")
    args = parser.parse_args()
    if args.vtypes:
        if not (args.pdb_name and args.symbols and args.source_name):
            parser.error("--vtypes needs --pdb-name, --symbols and --source-name")
        table = extract(vtypes_to_isf(load_vtypes(args.source)), _symbols_argument(args.symbols))
        pdb = {"database": args.pdb_name, "machine_type": MACHINE_I386}
        source = {"kind": "volatility2-vtypes", "overlay": args.source_name}
        document = profile_document(table, args.build, args.nt_version, pdb, source, symbols_invented=True)
    else:
        isf = load_isf(args.source)
        real_pdb = isf["metadata"]["windows"]["pdb"]
        pdb = {"database": real_pdb.get("database", "ntkrnlmp.pdb"),
               "machine_type": real_pdb.get("machine_type", MACHINE_AMD64)}
        source = {"kind": "isf", "pdb": {key: real_pdb[key] for key in ("GUID", "age", "database") if key in real_pdb}}
        document = profile_document(extract(isf), args.build, args.nt_version, pdb, source, symbols_invented=False)
    out = PROFILE_DIR / f"{args.name}.json"
    out.write_text(render(document))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
