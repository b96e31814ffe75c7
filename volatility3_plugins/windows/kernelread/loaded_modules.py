"""``PsLoadedModuleList``: the modules the kernel says are loaded, walked once per run.

The list is walked both ways with the bounded walker, so the run knows whether it saw the whole
list: a routine in no module of a *complete* list lies outside every loaded module (evidence);
in no module of an incomplete list, it may lie in a module past the break (no evidence).
"""

import dataclasses
from typing import TYPE_CHECKING, List, Optional

from . import diagnostics, lists

if TYPE_CHECKING:
    from .context import KernelContext

MAX_MODULES = 4096
#: No driver image is larger (the largest kernel images are tens of MiB).
MAX_IMAGE_SIZE = 0x10000000
LIST_SYMBOL = "PsLoadedModuleList"
ROUTE_NAME = "module list"


@dataclasses.dataclass(frozen=True)
class LoadedModule:
    base: int
    size: int
    name: Optional[str]  # BaseDllName; None when unreadable
    is_kernel: bool
    #: Not in PsLoadedModuleList: known from another trace (:mod:`.image_traces`)
    hidden: bool = False

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.size

    @property
    def label(self) -> str:
        return self.name if self.name else f"{self.base:#x}"


@dataclasses.dataclass
class ModuleList:
    modules: List[LoadedModule] = dataclasses.field(default_factory=list)
    #: The list could be walked at all (head readable, at least one module).
    available: bool = False
    #: Some walk closed on the head: every loaded module is in ``modules``.
    complete: bool = False


def entry_view(kernel: "KernelContext"):
    """The loader entry's view: ``_KLDR_DATA_TABLE_ENTRY`` (8.1+) or ``_LDR_DATA_TABLE_ENTRY``."""
    members = [
        "InLoadOrderLinks.Flink",
        "DllBase",
        "SizeOfImage",
        "BaseDllName.Length",
        "BaseDllName.MaximumLength",
        "BaseDllName.Buffer",
    ]
    name = "_KLDR_DATA_TABLE_ENTRY" if kernel.kernel_module.has_type("_KLDR_DATA_TABLE_ENTRY") else "_LDR_DATA_TABLE_ENTRY"
    return kernel.kernel_view(name, members)


def list_loaded_modules(kernel: "KernelContext") -> ModuleList:
    """The modules of ``PsLoadedModuleList``, bounded; entries without a usable range skipped."""
    head = kernel.symbols.address(LIST_SYMBOL)
    view = entry_view(kernel)
    if head is None or view is None:
        kernel.diagnostics.warning("No nt!PsLoadedModuleList: routines not attributed")
        kernel.diagnostics.route(ROUTE_NAME, diagnostics.UNAVAILABLE, "no symbol")
        return ModuleList()
    walked = lists.walk_list(kernel, head, "nt!PsLoadedModuleList", MAX_MODULES)
    link = view.offset("InLoadOrderLinks.Flink")
    found: List[LoadedModule] = []
    for entry in walked.entries:
        record = view.read(kernel.reader, entry - link)
        base, size = record.DllBase, record.SizeOfImage
        if not record.readable("DllBase") or not record.readable("SizeOfImage"):
            continue
        if not base or not 0 < size <= MAX_IMAGE_SIZE:
            continue
        found.append(LoadedModule(base, size, kernel.record_unicode(record, "BaseDllName"), base == kernel.base))
    if not found:
        kernel.diagnostics.warning("PsLoadedModuleList is unreadable or empty: routines not attributed")
        kernel.diagnostics.route(ROUTE_NAME, diagnostics.UNAVAILABLE, "unreadable or empty")
        return ModuleList()
    state = diagnostics.COMPLETE if walked.complete else diagnostics.INCOMPLETE
    kernel.diagnostics.route(ROUTE_NAME, state, f"{len(found)} modules")
    return ModuleList(found, True, walked.complete)
