"""Ground truth: what a correct plugin must report for a forged image.

Computed from what the forge planted (never by reading memory back), in the plugin's output
vocabulary: one expected row per reachable registration, one per object without any, with the
columns of ``windows.callbackobjects`` (``Evidence`` always ``complete``: a forged image holds all
its memory) and the flags of ../shared/notes/callback-objects.md.

Addresses are masked to 48 bits, as Volatility renders kernel pointers. ``rows`` describes a
list-only run: rows that only pool scanning can produce carry ``requires_scan``; flags only
scanning can raise are listed in ``scan_flags`` of the row (they are part of ``Flags`` too, so
a ``--no-scan`` run prints ``Flags`` minus ``scan_flags`` for the rows without
``requires_scan``). ``rows_with_scan`` is exactly what a default (scanning) run prints: FoundBy
with ``scan``, rows of unlinked and freed blocks, hidden drivers named in ``Module`` (without
scanning a hidden driver is named only when its driver object or inverted-function-table entry
shows it: ``routine_truth.py``). ``Landing`` and ``LandingOwner``: where a planted routine's code
sends control (``ImageForge.transfers``), None elsewhere.

``pool`` names the build's allocator and its roots; ``blocks`` lists every pool block the forge
wrote, with its allocation state: ``allocated``, or ``freed`` with ``how`` (``lfh``, ``vs``,
``vs_delay``, ``lookaside``, ``pending``, ``list``: see ``pool.FreedHow``) and whether its pool
header (tag) is still where it was (``header_intact``). A freed block is never evidence: a
freed registration a scan can find is a row flagged ``freed`` and nothing else; a freed object
or loader entry gives no row at all.
"""

from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..memory.physical import masked
from ..plants.callbacks import CALLBACK_SIGNATURE, CallbackObject, Registration
from . import routine_truth

if TYPE_CHECKING:
    from ..kernel.modules import LoadedModule
    from .forge import ImageForge

SCAN_ONLY_FLAGS = frozenset({"orphan_registration", "freed"})
#: Every row's ``Evidence``: a forged image holds all its memory, and every planted corruption
#: leaves a walk that closes (the plugin's imperfect-memory tests damage images after the truth
#: is taken).
EVIDENCE = "complete"


def _object_routes(forge: "ImageForge", callback: CallbackObject, scanning: bool) -> List[str]:
    routes = []
    if callback.in_callback_list:
        routes.append("list")
    if callback.in_directory:
        routes.append("directory")
    if forge.callbacks.globals_pointing_at(callback):
        routes.append("global")
    # Every forged object is an allocated pool block whose header says Callback: the scan
    # confirms each one (its signature is judged separately, bad_signature).
    if scanning:
        routes.append("scan")
    return routes


def _object_flags(forge: "ImageForge", callback: CallbackObject) -> List[str]:
    flags = []
    if callback.signature != CALLBACK_SIGNATURE:
        flags.append("bad_signature")
    if forge.layout.has_callback_list and not callback.in_callback_list:
        flags.append("unlinked_object")
    if not callback.in_directory:
        flags.append("not_in_directory")
    for global_name in forge.callbacks.globals_pointing_at(callback):
        if callback.full_name != "\\Callback\\" + global_name[len("ExCb"):]:
            flags.append("global_mismatch")
            break
    return flags


def _registration_row(forge: "ImageForge", callback: Optional[CallbackObject], registration: Registration,
                      reported: int, object_flags: List[str], scanning: bool,
                      facts_cache: Dict[int, Dict[str, Any]]) -> Dict[str, Any]:
    if registration.routine not in facts_cache:  # a few dozen routines serve thousands of rows
        facts_cache[registration.routine] = routine_truth.place(forge, registration.routine, scanning)
    facts = facts_cache[registration.routine]
    control = routine_truth.control(forge, facts["owner"], registration.routine, registration.context, scanning)
    flags = list(object_flags)
    scan_only = set(facts["scan_only"])
    if registration.freed:
        # Freed pool is full of stale blocks: nothing in it is evidence of tampering.
        flags, scan_only = ["freed"], set()
    else:
        flags += facts["flags"] + control["flags"]
        if callback is not None and masked(registration.backlink) != masked(callback.address):
            flags.append("bad_backlink")
        if callback is None:
            flags.append("orphan_registration")
        if callback is not None and not callback.allow_multiple and reported > 1:
            flags.append("multiple_on_exclusive")
        if callback is not None and callback.full_name in forge.expected_registrants:
            if facts["Module"] not in forge.expected_registrants[callback.full_name]:
                flags.append("unexpected_registrant")
    return {
        "Registration": masked(registration.address),
        "Routine": masked(registration.routine),
        "Context": masked(registration.context),
        "Busy": registration.busy,
        "UnregisterWaiting": registration.unregister_waiting,
        "Module": facts["Module"],
        "Symbol": facts["Symbol"],
        "Flags": sorted(set(flags)),
        "Landing": control["Landing"],
        "LandingOwner": control["LandingOwner"],
        "Evidence": EVIDENCE,
        "scan_flags": sorted(set(flags) & (SCAN_ONLY_FLAGS | scan_only)),
    }


def _object_columns(forge: "ImageForge", callback: CallbackObject, routes: List[str]) -> Dict[str, Any]:
    return {
        "Object": masked(callback.address),
        "Name": callback.full_name,
        "AllowMultiple": callback.allow_multiple,
        "FoundBy": routes,
    }


def expected_rows(forge: "ImageForge", scanning: bool = False) -> List[Dict[str, Any]]:
    """The rows of a run without scanning (``--no-scan``, the default of this function:
    scan-only rows are included and marked, their FoundBy is ``["scan"]``) or of a scanning
    run (``scanning=True``: exactly the rows the plugin prints by default).

    Scanning finds every registration block in pool. One on no walkable list (unlinked, freed,
    or behind a planted list corruption) is shown with the object its ``CallbackObject``
    names, with registration flags only; one naming no callback object is not reported.
    """
    rows: List[Dict[str, Any]] = []
    facts: Dict[int, Dict[str, Any]] = {}
    by_address = {masked(c.address): c for c in forge.callbacks.live_objects}
    loose: List[Registration] = list(forge.callbacks.loose_registrations)
    for callback in forge.callbacks.live_objects:
        routes = _object_routes(forge, callback, scanning)
        requires_scan = not _object_routes(forge, callback, False)
        object_flags = _object_flags(forge, callback)
        columns = _object_columns(forge, callback, routes or ["scan"])
        visible = [r for r in callback.registrations if r.linked and r.reachable]
        for registration in visible:
            row = dict(columns, **_registration_row(forge, callback, registration, len(visible), object_flags, scanning, facts))
            rows.append(dict(row, requires_scan=requires_scan))
        if not visible:
            rows.append(dict(columns, Registration=None, Routine=None, Context=None, Busy=None,
                             UnregisterWaiting=None, Module=None, Symbol=None,
                             Flags=sorted(object_flags), Landing=None, LandingOwner=None, Evidence=EVIDENCE, scan_flags=[],
                             requires_scan=requires_scan))
        loose += [r for r in callback.registrations if not (r.linked and r.reachable)]
    # Blocks no walk reaches (unlinked, freed, cut off by corruption): only a scan finds them.
    for registration in loose:
        if not scanning and registration.linked:
            continue  # cut off by corruption: without a scan, simply not seen
        if not registration.block.header_intact:
            continue  # the free wrote over its pool header: no tag left for a scan to find
        owner = by_address.get(masked(registration.backlink))
        if owner is None:
            continue
        columns = _object_columns(forge, owner, _object_routes(forge, owner, scanning) or ["scan"])
        rows.append(dict(columns, **_registration_row(forge, None, registration, 0, [], scanning, facts), requires_scan=True))
    return rows


def _module_record(module: "LoadedModule") -> Dict[str, Any]:
    return {
        "name": module.name,
        "path": module.path,
        "base": masked(module.base),
        "size": module.size,
        "in_module_list": module.in_module_list,
        "sections": [
            {"name": s.name, "rva": s.rva, "size": s.virtual_size, "executable": s.executable}
            for s in module.image.sections
        ],
        "exception_directory": module.image.exception_directory(),
        "functions": [
            {"name": f.name, "rva": f.rva, "size": len(f.body), "leaf": f.leaf, "fragment": f.fragment_rva}
            for f in (module.image.code.functions.values() if module.image.code is not None else ())
        ],
        "loader_entry": module.loader_entry,
        "driver_object": module.has_driver_object,
        "inverted_table": module.in_inverted_table,
    }


def ground_truth(forge: "ImageForge") -> Dict[str, Any]:
    layout = forge.layout
    pool = forge.pool
    return {
        "profile": layout.name,
        "build": layout.build,
        "seed": forge.seed,
        "pdb": {"name": layout.pdb_name, "guid": layout.guid, "age": layout.age},
        "architecture": "x64" if layout.is_64bit else "x86",
        "dtb": forge.machine.plan.dtb,
        "kernel_base": masked(forge.kernel.base),
        "has_callback_list": layout.has_callback_list,
        "modules": [_module_record(module) for module in forge.loader.modules],
        "processes": forge.processes.records(),
        "unloaded_modules": [dict(_module_record(module), entry=masked(module.entry or 0))
                             for module in forge.loader.unloaded],
        # nt!MmUnloadedDrivers as Volatility's windows.unloadedmodules lists it, the sessions'
        # _MM_SESSION_SPACE (global view) by id, the RAM nt!MmPhysicalMemoryBlock describes.
        "unloaded_drivers": [{key: masked(value) if isinstance(value, int) else value for key, value in entry.items()}
                             for entry in forge.memory_manager.unloaded],
        "sessions": {str(session): masked(space) for session, space in forge.memory_manager.sessions.items()},
        "physical_memory_runs": [list(run) for run in forge.machine.physical.runs()],
        "driver_objects": forge.drivers.records(),
        "deleted_driver_objects": forge.drivers.deleted_records(),
        "inverted_function_table": forge.inverted_table.records(),
        "code_plants": [dict(address=address, argument=plant.argument, through=plant.through,
                             landing=None if plant.landing is None else masked(plant.landing))
                        for address, plant in sorted(forge.transfers.items())],
        "object_types": {name: index for name, index in forge.objects.type_indices.items()},
        "callback_directory": sorted(c.name for c in forge.callbacks.live_objects if c.in_directory and c.name),
        "deleted_callback_objects": [masked(c.address) for c in forge.callbacks.callback_objects if c.deleted],
        "expected_registrants": forge.expected_registrants,
        "rows": expected_rows(forge),
        "rows_with_scan": expected_rows(forge, scanning=True),
        "pool": pool.describe(),
        "blocks": [block.record() for block in pool.blocks],
        "big_pool": pool.big_pool.describe() if pool.big_pool is not None else None,
        "notes": forge.notes,
    }
