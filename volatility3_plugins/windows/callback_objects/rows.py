"""Turning objects and their registrations into output rows with their flags.

One row per registration; an object without registrations gives one row with the
registration columns absent. A registration found only by the pool scan, on no walked list
(a *loose* registration), is shown under the object its ``CallbackObject`` names.
"""

import dataclasses
from typing import List, Optional, Tuple

from ...schema import flags
from ...schema.baseline import RowView
from ..kernelpool.state import BlockState
from ..kernelread.attribution import Attribution, Attributor
from ..kernelread.views import is_absent
from . import classify, routes
from .expected import ExpectedRegistrants
from .inventory import CallbackObjectRecord
from .landing import CodeFacts, RoutineCode
from .registrations import Registration, RegistrationList


@dataclasses.dataclass
class Row:
    """One output row: an object with one of its registrations (or with none)."""

    record: CallbackObjectRecord
    registration: Optional[Registration]
    attribution: Optional[Attribution]
    flags: List[str]
    #: What the routine's code does (None: no routine in a module, or not examined)
    code: Optional[CodeFacts] = None

    @property
    def suspicious(self) -> bool:
        return flags.any_suspicious(self.flags)

    def view(self) -> RowView:
        """What the known-good comparison reads of this row: the columns a JSON output gives,
        and whether the object's name could be read (a JSON output writes null for both)."""
        attribution = self.attribution
        module = attribution.module if attribution is not None else None
        name = self.record.name
        return RowView(
            name=name if isinstance(name, str) else None,
            has_registration=self.registration is not None,
            module=module.name if module is not None and module.name else None,
            symbol=attribution.symbol if attribution is not None and module is not None else None,
            flags=tuple(self.flags),
            name_readable=not is_absent(name),
        )


def object_facts(record: CallbackObjectRecord, registration_count: int) -> classify.ObjectFacts:
    allow = record.allow_multiple
    return classify.ObjectFacts(
        body_readable=record.body_readable,
        signature_ok=record.signature_ok,
        list_state=record.list_state,
        found_by_list=routes.ROUTE_LIST in record.routes,
        directory_complete=record.directory_complete,
        found_by_directory=routes.ROUTE_DIRECTORY in record.routes,
        global_mismatch=record.global_mismatch,
        allow_multiple=None if is_absent(allow) else bool(allow),
        registration_count=registration_count,
        allocation_unknown=record.routes == {routes.ROUTE_SCAN} and record.scan_state == BlockState.UNKNOWN,
    )


def _nonzero(value: object) -> Optional[int]:
    """A pointer read from memory and not zero: only such a value is evidence."""
    return None if is_absent(value) or not value else int(value)  # type: ignore[arg-type]


def routine_facts(
    registration: Registration, attributor: Attributor, code: Optional[RoutineCode] = None
) -> Tuple[Optional[Attribution], classify.RegistrationFacts, Optional[CodeFacts]]:
    """Where the routine lies and what its code does (with ``code``), as classification input
    (no backlink or registrant facts).

    A routine of zero or that could not be read says nothing; a routine in no module of a
    module list that was not read to its end may lie in a module past the break: no
    ``outside_modules`` then (``list_incomplete`` says why)."""
    facts = classify.RegistrationFacts(readable=not registration.zeroed)
    routine = _nonzero(registration.routine)
    if routine is None or not facts.readable:
        return None, facts, None
    attribution = attributor.attribute(routine)
    if attribution.in_module:
        facts.in_module = True
    elif attributor.modules_complete:
        facts.in_module = False
        facts.hidden_module = attribution.hidden_module
    elif attributor.modules_available:
        facts.module_list_incomplete = True
    facts.executable = attribution.executable
    found = code.examine(registration, attribution) if code is not None else None
    if found is not None:
        facts.trampoline, facts.mid_function, facts.code_cave = found.trampoline, found.mid_function, found.code_cave
    return attribution, facts, found


def object_rows(
    record: CallbackObjectRecord,
    registrations: RegistrationList,
    attributor: Attributor,
    rules: ExpectedRegistrants,
    code: Optional[RoutineCode] = None,
) -> List[Row]:
    """The rows of one object with their flags, sorted by severity (``code``: the run's examiner
    of routines' code, None to leave code unexamined)."""
    regs = registrations.registrations
    obj_facts = object_facts(record, sum(1 for reg in regs if not reg.zeroed))
    if not regs:
        return [Row(record, None, None, classify.classify(obj_facts))]
    rows: List[Row] = []
    name = record.name if isinstance(record.name, str) else None
    for reg in regs:
        attribution, facts, found = routine_facts(reg, attributor, code)
        owner = _nonzero(reg.callback_object)
        if owner is not None:
            facts.backlink_ok = owner == record.address
        if facts.in_module is not None:
            module = attribution.module if attribution is not None and facts.in_module else None
            module_name = module.name if module is not None else None
            # A routine inside a module whose name could not be read (a zeroed or missing
            # page under its loader entry) has an owner we cannot name: no evidence either way.
            if not (facts.in_module and not module_name):
                facts.unexpected_registrant = rules.is_unexpected(name, module_name)
        rows.append(Row(record, reg, attribution, classify.classify(obj_facts, facts), found))
    return rows


def loose_row(
    record: CallbackObjectRecord,
    registration: Registration,
    state: BlockState,
    owner_list_complete: bool,
    attributor: Attributor,
    code: Optional[RoutineCode] = None,
) -> Row:
    """The row of a loose registration (found by the scan on no walked list), shown with the
    object its ``CallbackObject`` names (``record``): ``state`` is its block's allocation state,
    ``owner_list_complete`` says whether every list that could hold it was walked to its end."""
    attribution, facts, found = routine_facts(registration, attributor, code)
    return Row(record, registration, attribution, classify.classify_loose(facts, state, owner_list_complete), found)
