"""The detection-flag vocabulary and its severity order.

The names are the product's contract (see the project notes, "Detection flags"): users script
against them, so never rename one. ``SEVERITY_ORDER`` is the single place that orders them:
suspicious flags first, then informational ones; the ``Flags`` column is sorted by it. Which
facts raise which flag is the plugin's business (``windows/callback_objects/classify.py``); what
the names mean and how they rank is shared with the fleet commands, hence here.
"""

from typing import Iterable, List

# Suspicious
OUTSIDE_MODULES = "outside_modules"
HIDDEN_MODULE = "hidden_module"  # loader entries or driver objects in pool, \\Driver, the inverted function table
TRAMPOLINE = "trampoline"  # the routine's first instructions send control to an argument or outside every module
NON_EXECUTABLE = "non_executable"
CODE_CAVE = "code_cave"  # in an executable section beyond its VirtualSize, or in no section
MID_FUNCTION = "mid_function"  # x64: strictly inside a function of the image's exception directory
UNLINKED_OBJECT = "unlinked_object"
ORPHAN_REGISTRATION = "orphan_registration"  # needs pool scanning
BAD_BACKLINK = "bad_backlink"
MULTIPLE_ON_EXCLUSIVE = "multiple_on_exclusive"
BAD_SIGNATURE = "bad_signature"
UNEXPECTED_REGISTRANT = "unexpected_registrant"
GLOBAL_MISMATCH = "global_mismatch"
NOT_IN_BASELINE = "not_in_baseline"  # needs --baseline
# Informational
FREED = "freed"  # needs pool scanning; the flag, not the allocation state of a pool block
NOT_IN_DIRECTORY = "not_in_directory"
ALLOCATION_UNKNOWN = "allocation_unknown"  # needs pool scanning
LIST_INCOMPLETE = "list_incomplete"
UNREADABLE = "unreadable"

SUSPICIOUS = (
    OUTSIDE_MODULES,
    HIDDEN_MODULE,
    TRAMPOLINE,
    NON_EXECUTABLE,
    CODE_CAVE,
    MID_FUNCTION,
    UNLINKED_OBJECT,
    ORPHAN_REGISTRATION,
    BAD_BACKLINK,
    MULTIPLE_ON_EXCLUSIVE,
    BAD_SIGNATURE,
    UNEXPECTED_REGISTRANT,
    GLOBAL_MISMATCH,
    NOT_IN_BASELINE,
)
INFORMATIONAL = (FREED, NOT_IN_DIRECTORY, ALLOCATION_UNKNOWN, LIST_INCOMPLETE, UNREADABLE)
#: A row carrying one of these is no evidence of a live registration (a freed block, a block of
#: unknown state, memory that cannot be read): never compared with a baseline, never stacked.
NO_EVIDENCE = frozenset({FREED, ALLOCATION_UNKNOWN, UNREADABLE})

#: Most severe first. Within the suspicious group the order puts code-location findings
#: (where the routine runs) before structure tampering, then data-driven findings, then the
#: comparison with known-good images (a difference, not yet a finding).
SEVERITY_ORDER = SUSPICIOUS + INFORMATIONAL
_RANK = {name: rank for rank, name in enumerate(SEVERITY_ORDER)}


def is_suspicious(flag: str) -> bool:
    return flag in SUSPICIOUS


def any_suspicious(flags: Iterable[str]) -> bool:
    """Whether a row with these flags is suspicious (informational flags do not count)."""
    return any(flag in SUSPICIOUS for flag in flags)


def sort_flags(flags: Iterable[str]) -> List[str]:
    """Deduplicates and sorts by severity; unknown names (never expected) go last, by name."""
    unique = set(flags)
    return sorted(unique, key=lambda f: (_RANK.get(f, len(_RANK)), f))


def is_evidence(row_flags: Iterable[str]) -> bool:
    """Whether a registration row with these flags is evidence of a live registration."""
    return not NO_EVIDENCE.intersection(row_flags)
