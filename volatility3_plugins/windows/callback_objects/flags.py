"""The detection-flag vocabulary, its severity order, and the row classification.

The names are the product's contract (see the project notes, "Detection flags"): users script
against them, so never rename one. ``SEVERITY_ORDER`` is the single place that orders them:
suspicious flags first, then informational ones; the ``Flags`` column is sorted by it.
"""

import dataclasses
from typing import Iterable, List, Optional, Sequence, Set

# Suspicious
OUTSIDE_MODULES = "outside_modules"
HIDDEN_MODULE = "hidden_module"  # needs pool scanning (loader entries in pool)
NON_EXECUTABLE = "non_executable"
UNLINKED_OBJECT = "unlinked_object"
ORPHAN_REGISTRATION = "orphan_registration"  # needs pool scanning
BAD_BACKLINK = "bad_backlink"
MULTIPLE_ON_EXCLUSIVE = "multiple_on_exclusive"
BAD_SIGNATURE = "bad_signature"
UNEXPECTED_REGISTRANT = "unexpected_registrant"
GLOBAL_MISMATCH = "global_mismatch"
# Informational
FREED = "freed"  # needs pool scanning
NOT_IN_DIRECTORY = "not_in_directory"

SUSPICIOUS = (
    OUTSIDE_MODULES,
    HIDDEN_MODULE,
    NON_EXECUTABLE,
    UNLINKED_OBJECT,
    ORPHAN_REGISTRATION,
    BAD_BACKLINK,
    MULTIPLE_ON_EXCLUSIVE,
    BAD_SIGNATURE,
    UNEXPECTED_REGISTRANT,
    GLOBAL_MISMATCH,
)
INFORMATIONAL = (FREED, NOT_IN_DIRECTORY)

#: Most severe first. Within the suspicious group the order puts code-location findings
#: (where the routine runs) before structure tampering, then data-driven findings.
SEVERITY_ORDER = SUSPICIOUS + INFORMATIONAL
_RANK = {name: rank for rank, name in enumerate(SEVERITY_ORDER)}

def is_suspicious(flag: str) -> bool:
    return flag in SUSPICIOUS


def sort_flags(flags: Iterable[str]) -> List[str]:
    """Deduplicates and sorts by severity; unknown names (never expected) go last, by name."""
    unique = set(flags)
    return sorted(unique, key=lambda f: (_RANK.get(f, len(_RANK)), f))


def format_flags(flags: Iterable[str]) -> str:
    """The ``Flags`` column: comma-separated, most severe first, empty string when clean."""
    return ",".join(sort_flags(flags))


@dataclasses.dataclass
class ObjectFacts:
    """What the routes and the object read told us, as classification input."""

    found_by_directory: bool
    directory_walked: bool  # False: the \\Callback walk failed, not_in_directory is unknown
    found_by_list: bool
    list_walked: bool  # False on Windows 7 or when ExpCallbackListHead could not be read
    signature_ok: bool
    global_mismatch: bool
    allow_multiple: Optional[bool]  # None when unreadable
    registration_count: int


@dataclasses.dataclass
class RegistrationFacts:
    backlink_ok: Optional[bool]  # None when CallbackObject is unreadable
    in_module: Optional[bool]  # None when the routine is unreadable
    executable: Optional[bool]  # None when unknown (no section headers, no module)
    unexpected_registrant: bool
    #: The routine lies in a driver image found by scanning, absent from the module list
    hidden_module: bool = False


def classify_object(facts: ObjectFacts) -> Set[str]:
    """Flags that belong to the object, hence to each of its rows."""
    found: Set[str] = set()
    if not facts.signature_ok:
        found.add(BAD_SIGNATURE)
    if facts.global_mismatch:
        found.add(GLOBAL_MISMATCH)
    # Only meaningful when the list could be walked: otherwise every object would look unlinked.
    if facts.list_walked and not facts.found_by_list:
        found.add(UNLINKED_OBJECT)
    if facts.directory_walked and not facts.found_by_directory:
        found.add(NOT_IN_DIRECTORY)
    return found


def classify_routine(facts: RegistrationFacts) -> Set[str]:
    """Flags that say where a registration's routine lies."""
    found: Set[str] = set()
    if facts.in_module is False:
        found.add(OUTSIDE_MODULES)
    if facts.hidden_module:
        found.add(HIDDEN_MODULE)
    if facts.executable is False:
        found.add(NON_EXECUTABLE)
    return found


def classify_registration(facts: RegistrationFacts, object_facts: ObjectFacts) -> Set[str]:
    """Flags of one registration row (object-level flags not included)."""
    found = classify_routine(facts)
    if facts.backlink_ok is False:
        found.add(BAD_BACKLINK)
    if object_facts.allow_multiple is False and object_facts.registration_count > 1:
        found.add(MULTIPLE_ON_EXCLUSIVE)
    if facts.unexpected_registrant:
        found.add(UNEXPECTED_REGISTRANT)
    return found


def classify(
    object_facts: ObjectFacts, registration_facts: Optional[RegistrationFacts] = None
) -> List[str]:
    """All flags of one output row, sorted by severity. ``registration_facts`` is None for
    the single row of an object without registrations."""
    found = classify_object(object_facts)
    if registration_facts is not None:
        found |= classify_registration(registration_facts, object_facts)
    return sort_flags(found)


def classify_loose(facts: RegistrationFacts, freed: bool) -> List[str]:
    """Flags of a registration block found by scanning on no object's list.

    Freed pool is full of stale blocks (the false positive of scanners that report them as
    live): a freed block is ``freed`` and nothing else, whatever its stale contents say. An
    allocated one is ``orphan_registration`` plus what its routine's location says; the
    object-level flags stay on the rows of the object its ``CallbackObject`` names.
    """
    if freed:
        return [FREED]
    return sort_flags({ORPHAN_REGISTRATION} | classify_routine(facts))


def vocabulary() -> Sequence[str]:
    return SEVERITY_ORDER
