"""What a correct plugin says of a registered routine, from what the forge planted: the module
holding it (listed, or hidden and known by some trace, under which name), the flags of its
place (``outside_modules``, ``hidden_module``, ``non_executable``, ``code_cave``, ``mid_function``)
and what its code does (``trampoline``, the ``Landing`` columns).

Which traces make a hidden image known: its driver object (always in ``\\Driver``) and its
inverted-function-table entry (x64) with or without scanning; its loader entry (``MmLd``) only to
a scanning run, and only while allocated. Its name: the loader entry's (found by the scan, or
through the driver object's ``DriverSection`` while the entry is intact), else the driver
object's ``\\Driver\\<service>``, else ``hidden@0xBASE``.
"""

from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..kernel.drivers import DRIVER_DIRECTORY, service_name
from ..kernel.modules import ENTRY_ALLOCATED, LoadedModule
from ..memory.physical import masked

if TYPE_CHECKING:
    from .forge import ImageForge

#: The arguments a callback routine receives after the registration's context (argument 0): two
#: per notification.
NOTIFICATION_ARGUMENTS = (1, 2)


def known_without_scan(forge: "ImageForge", module: LoadedModule) -> bool:
    return module.has_driver_object or (forge.layout.is_64bit and module.in_inverted_table)


def known_with_scan(forge: "ImageForge", module: LoadedModule) -> bool:
    return known_without_scan(forge, module) or module.loader_entry == ENTRY_ALLOCATED


def visible(forge: "ImageForge", module: LoadedModule, scanning: bool) -> bool:
    """The plugin attributes addresses to this module in this mode."""
    if module.in_module_list:
        return True
    return known_with_scan(forge, module) if scanning else known_without_scan(forge, module)


def label(module: LoadedModule, scanning: bool) -> str:
    """The name the plugin gives a module."""
    if module.in_module_list:
        return module.name
    if module.loader_entry == ENTRY_ALLOCATED and (scanning or module.has_driver_object):
        return module.name
    if module.has_driver_object:
        return f"\\{DRIVER_DIRECTORY}\\{service_name(module)}"
    return f"hidden@{masked(module.base):#x}"


def place(forge: "ImageForge", routine: int, scanning: bool) -> Dict[str, Any]:
    """Module, Symbol and the flags of where ``routine`` lies; ``scan_only``: flags a run without
    scanning does not give; ``owner``: the module the plugin attributes it to (None: none)."""
    owner = forge.loader.owner_of(routine)
    flags: List[str] = []
    scan_only: List[str] = []
    if owner is None or not owner.in_module_list:
        flags.append("outside_modules")
        if owner is not None and known_with_scan(forge, owner):
            flags.append("hidden_module")
            if not known_without_scan(forge, owner):
                scan_only.append("hidden_module")
        if owner is None or not visible(forge, owner, scanning):
            return {"Module": None, "Symbol": None, "flags": flags, "scan_only": scan_only, "owner": None}
    assert owner is not None
    rva = masked(routine) - masked(owner.base)
    section = owner.section_of(routine)
    if section is None or not section.executable:
        flags.append("non_executable")
    if owner.image.in_cave(rva):
        flags.append("code_cave")
    # A routine at a symbol is a named entry; elsewhere the image's exception directory says.
    code = owner.image.code
    if forge.layout.is_64bit and owner.exact_symbol(routine) is None and code is not None:
        if code.position(rva) in ("inside", "fragment"):
            flags.append("mid_function")
    return {"Module": label(owner, scanning), "Symbol": owner.symbol_for(routine, label(owner, scanning)),
            "flags": flags, "scan_only": scan_only, "owner": owner}


def landing_owner(forge: "ImageForge", address: int, scanning: bool) -> str:
    """``module!symbol`` / ``module+0xOFF``, ``pool TAG STATE`` or ``none``."""
    module = forge.loader.owner_of(address)
    if module is not None and visible(forge, module, scanning):
        name = label(module, scanning)
        exact = module.exact_symbol(address)
        return f"{name}!{exact}" if exact is not None else module.symbol_for(address, name)
    # Every block the forge allocated, big-pool allocations too (the plugin names the block from
    # the pool map's enumeration, which reads nt!PoolBigPageTable).
    for block in forge.pool.blocks:
        if block.header <= address < block.header + block.size:
            tag = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in block.tag)
            return f"pool {tag} {block.state}"
    return "none"


def control(forge: "ImageForge", owner: Optional[LoadedModule], routine: int, context: int,
            scanning: bool) -> Dict[str, Any]:
    """``trampoline`` (a flag or none), ``Landing`` and ``LandingOwner`` of a routine in a module."""
    transfer = forge.transfers.get(masked(routine)) if owner is not None else None
    if transfer is None:
        return {"flags": [], "Landing": None, "LandingOwner": None}
    if transfer.argument is not None:
        if transfer.argument in NOTIFICATION_ARGUMENTS:
            return {"flags": ["trampoline"], "Landing": None, "LandingOwner": f"argument {transfer.argument} (per notification)"}
        landing = context if transfer.through is None else forge.code_pointers[masked(context) + transfer.through]
        return {"flags": ["trampoline"], "Landing": masked(landing), "LandingOwner": landing_owner(forge, landing, scanning)}
    landing = transfer.landing
    placed = forge.loader.owner_of(landing)
    flags = ["trampoline"] if placed is None or not placed.in_module_list else []
    return {"flags": flags, "Landing": masked(landing), "LandingOwner": landing_owner(forge, landing, scanning)}
