"""Whether an image can support a verdict, and the verdict line every run ends with.

An image that cannot support a verdict must say so instead of printing a clean table: a dump
truncated in transit, an acquisition that lost the pages that matter, or the symbol table of
another build all give an empty or meaningless table. :func:`check_symbols` compares kernel
anchors with what the image holds before anything else is read; :func:`check_usable` looks at
what the routes found. Both raise an exception whose message names the likely cause and what to
try: :class:`ImageUnusable` is an ``InvalidAddressException`` and :class:`SymbolsMismatch` a
``SymbolError``, so Volatility's command line explains them as a missing page and a bad symbol
table, and exits non-zero.
"""

from typing import TYPE_CHECKING, List, Optional, Tuple

from volatility3.framework import exceptions

from ...schema import columns, flags, verdict_line
from ..kernelread import loaded_modules
from . import routes

if TYPE_CHECKING:
    from .context import CallbackContext
    from .pipeline import Report

TRY_TRUNCATED = (
    "check that the file is whole (its size against the acquisition log, or a crash dump's "
    "RequiredDumpSpace), re-acquire if possible, or run on another copy or format of the same memory"
)
TRY_SYMBOLS = (
    "check which kernel symbol table Volatility used (-vvv names the ISF it loaded), remove stale "
    "or hand-made ISFs from the symbol directories, clear the cache (--clear-cache) and let "
    "Volatility pick the table matching the kernel's PDB GUID"
)


class ImageUnusable(exceptions.InvalidAddressException):
    """The memory the verdict needs is not in the image."""


class SymbolsMismatch(exceptions.SymbolError):
    """The kernel's symbol table does not describe this image."""


Anchor = Tuple[str, Optional[bool]]  # (what was checked, confirmed / contradicted / unknown)


def symbol_anchors(kernel: "CallbackContext") -> List[Anchor]:
    """Kernel globals whose contents a matching symbol table predicts: ``ExCallbackObjectType``
    points at the object type named ``Callback``; ``PsLoadedModuleList`` starts with the kernel's
    own image. Each is confirmed, contradicted (read, and not what it must be), or unknown
    (missing or zero memory proves nothing)."""
    anchors: List[Anchor] = []
    headers = kernel.object_headers
    pointer = kernel.read_global_pointer(routes.CALLBACK_TYPE_GLOBAL)
    found = headers.read_type(pointer) if headers is not None and pointer else None
    anchors.append(
        (f"nt!{routes.CALLBACK_TYPE_GLOBAL} names the {routes.CALLBACK_TYPE} type", None if found is None else found[1] == routes.CALLBACK_TYPE)
    )
    anchors.append(("nt!PsLoadedModuleList starts with the kernel image", _first_module_is_kernel(kernel)))
    return anchors


def _first_module_is_kernel(kernel: "CallbackContext") -> Optional[bool]:
    head = kernel.symbols.address(loaded_modules.LIST_SYMBOL)
    view = loaded_modules.entry_view(kernel)
    if head is None or view is None:
        return None
    try:
        first = kernel.read_pointer(head)
    except exceptions.InvalidAddressException:
        return None
    if not first:
        return None
    record = view.read(kernel.reader, first - view.offset("InLoadOrderLinks.Flink"))
    if record.zeroed or not record.readable("DllBase"):
        return None
    return record.DllBase == kernel.base


def check_symbols(kernel: "CallbackContext") -> None:
    """Raise :class:`SymbolsMismatch` when every anchor that could be read contradicts the
    symbol table (and at least one could); warn when the anchors disagree."""
    anchors = symbol_anchors(kernel)
    contradicted = [what for what, state in anchors if state is False]
    confirmed = [what for what, state in anchors if state is True]
    if contradicted and not confirmed:
        kernel.diagnostics.flush()
        raise SymbolsMismatch(
            routes.CALLBACK_TYPE_GLOBAL,
            kernel.kernel_module.symbol_table_name,
            verdict_line.REFUSAL + "the kernel symbol table does not match this image (" + "; ".join(f"not true: {c}" for c in contradicted)
            + f"). Try: {TRY_SYMBOLS}.",
        )
    if contradicted:
        kernel.diagnostics.warning(
            "Kernel symbols doubtful: " + "; ".join(f"not true: {c}" for c in contradicted)
            + " (smear, or a symbol table of another build)"
        )


def check_usable(found: "Report") -> None:
    """Raise :class:`ImageUnusable` when the routes found nothing a verdict can rest on (saying
    first what the image file lacks, when that is known); warn once, naming every cause, when
    the evidence is incomplete but the image is still usable. Either way the warnings collected
    so far are said first."""
    kernel = found.kernel
    problems = [shortfall.detail for shortfall in kernel.image_shortfalls]
    if not found.attributor.modules_available:
        problems.append("the loaded-module list (nt!PsLoadedModuleList) is unreadable")
    if kernel.object_headers is None:
        problems.append("object headers cannot be decoded")
    unusable = len(problems) > len(kernel.image_shortfalls)
    if not any(record.body_readable for record in found.objects):
        problems.append("no route reached a single readable callback object")
        unusable = True
    kernel.diagnostics.flush()
    if unusable:
        likely = ("Likely cause: the missing part of the file" if kernel.image_shortfalls else
                  "Likely causes: a truncated or incomplete image (the pages these live in are missing), "
                  "or a kernel symbol table that does not match the image")
        raise ImageUnusable(
            kernel.layer_name,
            kernel.symbols.address(loaded_modules.LIST_SYMBOL) or 0,
            verdict_line.REFUSAL + "; ".join(problems) + f". {likely}. Try: {TRY_TRUNCATED}; {TRY_SYMBOLS}.",
        )
    causes = found.evidence_causes
    if causes:
        kernel.diagnostics.warning(
            f"Evidence degraded ({', '.join(causes)}): what could not be read is marked "
            f"{flags.LIST_INCOMPLETE} or {flags.UNREADABLE}, never accused; every row's Evidence column says "
            f"{columns.DEGRADED} and vol-callbackobjects exits {verdict_line.DEGRADED_EXIT_STATUS}"
        )
        kernel.diagnostics.flush()


def kernel_pdb(kernel: "CallbackContext") -> Optional[Tuple[str, int]]:
    """(GUID, age) of the kernel's PDB as its symbol table records it (the name Volatility gives
    the ISF file), None when the table does not say."""
    try:
        metadata = kernel.context.symbol_space[kernel.kernel_module.symbol_table_name].metadata
        guid, age = metadata.pdb_guid, metadata.pdb_age
    except (AttributeError, KeyError, exceptions.SymbolError):
        return None
    if not isinstance(guid, str) or not guid or not isinstance(age, int):
        return None
    return guid.upper(), age


def line_of(found: "Report") -> str:
    """One line for the end of every run (:mod:`...schema.verdict_line`): which kernel the verdict
    is about (a fleet sweep reads the build back: known-good images of another build compare
    badly), objects, registrations, rows by flag, whether the evidence is complete (and if not,
    why), the baseline compared with, routes and their state."""
    counts = found.counts
    known_good = found.known_good
    return verdict_line.format(
        verdict_line.VerdictLine(
            build=found.kernel.build_number,
            kernel_pdb=kernel_pdb(found.kernel),
            objects=counts.objects,
            registrations=counts.registrations,
            loose=counts.loose if found.scan.ran else None,
            suspicious_rows=counts.suspicious,
            flags=dict(counts.by_flag),
            baseline=(len(known_good.keys), len(known_good.sources)) if known_good is not None else None,
            routes=tuple(f"{name} {state}" for name, state in found.kernel.diagnostics.routes.items()),
            evidence=tuple(found.evidence_causes),
        )
    )
