"""Write a built-in forge profile from a real Volatility 3 kernel ISF.

The forge's built-in profiles are tables of facts (structure offsets and global symbol offsets)
taken from a real ntkrnlmp.pdb symbol table, so that the suite runs on a clean clone without
the real ISFs. This tool regenerates such a table; its output is committed, the ISF is not:

    python -m tests.forge.tools.extract_profile ISF.json.xz win10_19041_x64 --build 19041

Only the types and fields the forge writes (and the ones Volatility's Windows symbol class
insists on) are kept; pointers to types left out become ``void *``.
"""

import argparse
import lzma
import json
import pprint
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from ..layout import FORGE_SYMBOLS

# Types the forge writes, with the fields it needs; None keeps every field.
FORGED_FIELDS: Dict[str, Optional[List[str]]] = {
    "_LIST_ENTRY": None,
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
        "EntryPoint", "SizeOfImage", "FullDllName", "BaseDllName", "Flags", "CheckSum",
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
    "_DEVICE_OBJECT": ["Type", "Size", "ReferenceCount", "DriverObject", "NextDevice", "AttachedDevice", "DeviceType"],
    "_IMAGE_DOS_HEADER": None,
    # Members Volatility's version heuristics (symbols/windows/versions.py) look at.
    "_EPROCESS": [
        "Pcb", "UniqueProcessId", "ActiveProcessLinks", "ImageFileName", "KeepAliveCounter",
        "ControlFlowGuardEnabled", "ProcessFirstResume", "HighMemoryPriority", "VmProcessorHost",
        "VdmObjects", "TrustletIdentity", "TimerResolutionIgnore", "VmProcessorHostTransition",
        "PaeTop", "IdealProcessorAssignmentBlock", "MmSlabIdentity",
        "EnableProcessImpersonationLogging", "UmsScheduledThreads", "QuotaUsage", "WnfContext",
    ],
    "_HANDLE_TABLE": ["HandleCount"],
    "_KPRCB": ["PendingTickFlags"],
}

# Types Volatility's WindowsKernelIntermedSymbols requires to exist; the forge never writes
# them, so they keep their real size and no fields.
REQUIRED_BY_VOLATILITY = [
    "_ETHREAD", "_KTHREAD", "_ERESOURCE", "_TOKEN", "_FILE_OBJECT", "_CM_KEY_BODY", "_CMHIVE",
    "_CM_KEY_NODE", "_CM_KEY_VALUE", "_HMAP_ENTRY", "_MMVAD_SHORT", "_MMVAD", "_KMUTANT",
    "_OBJECT_SYMBOLIC_LINK", "_CONTROL_AREA", "_SHARED_CACHE_MAP", "_VACB", "_KTIMER",
    "_KPROCESS",
]



def load_isf(path: Path) -> Dict[str, Any]:
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt") as handle:
        return json.load(handle)


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


def extract(isf: Dict[str, Any]) -> Dict[str, Any]:
    user_types = isf["user_types"]
    selected: Dict[str, Dict[str, Any]] = {}
    embedded: Set[str] = set()
    enums: Set[str] = set()

    for name, wanted in FORGED_FIELDS.items():
        if name not in user_types:
            continue
        source = user_types[name]
        fields = {
            field: desc
            for field, desc in source["fields"].items()
            if wanted is None or field in wanted
        }
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

    symbols = {
        name: isf["symbols"][name]["address"] for name in FORGE_SYMBOLS if name in isf["symbols"]
    }
    return {
        "base_types": isf["base_types"],
        "user_types": dict(sorted(selected.items())),
        "enums": {name: isf["enums"][name] for name in sorted(enums)},
        "symbols": symbols,
    }


def render_module(table: Dict[str, Any], name: str, source_pdb: Dict[str, Any], build: int,
                  nt_version: str) -> str:
    def literal(value: Any) -> str:
        return pprint.pformat(value, indent=1, width=100, sort_dicts=True)

    major, minor = (int(part) for part in nt_version.split("."))
    pointer_size = table["base_types"]["pointer"]["size"]
    arch = "x64" if pointer_size == 8 else "x86"
    pdb_name = source_pdb.get("database", "ntkrnlmp.pdb")
    return (
        f'"""Kernel layout of Windows build {build} {arch} ({name}): facts for the forge.\n\n'
        f"Generated by tests/forge/tools/extract_profile.py from the real symbol table\n"
        f"{pdb_name} {source_pdb['GUID']}-{source_pdb['age']}; do not edit by hand.\n"
        f'"""\n\n'
        f"BUILD = {build}\n"
        f"NT_VERSION = ({major}, {minor})\n"
        f"POINTER_SIZE = {pointer_size}\n"
        f"SOURCE_PDB = {literal(source_pdb)}\n\n"
        f"BASE_TYPES = {literal(table['base_types'])}\n\n"
        f"ENUMS = {literal(table['enums'])}\n\n"
        f"SYMBOLS = {literal(table['symbols'])}\n\n"
        f"USER_TYPES = {literal(table['user_types'])}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("isf", type=Path)
    parser.add_argument("name", help="module name under tests/forge/profiles/")
    parser.add_argument("--build", type=int, required=True)
    parser.add_argument("--nt-version", default="10.0", help="NtMajorVersion.NtMinorVersion")
    args = parser.parse_args()
    isf = load_isf(args.isf)
    out = Path(__file__).resolve().parent.parent / "profiles" / f"{args.name}.py"
    out.write_text(render_module(extract(isf), args.name, isf["metadata"]["windows"]["pdb"],
                                 args.build, args.nt_version))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
