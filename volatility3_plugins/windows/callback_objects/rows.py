"""Turning objects and their registrations into output rows with their flags.

One row per registration; an object without registrations gives one row with the
registration columns absent. A registration found only by the pool scan, on no walked list
(a *loose* registration), is shown under the object its ``CallbackObject`` names.
"""

import dataclasses
from typing import List, Optional

from . import flags
from .attribution import Attribution, Attributor
from .expected import ExpectedRegistrants
from .merge import CallbackObjectRecord
from .registrations import Registration, RegistrationList
from .views import is_absent


@dataclasses.dataclass
class Row:
    """One output row: an object with one of its registrations (or with none)."""

    record: CallbackObjectRecord
    registration: Optional[Registration]
    attribution: Optional[Attribution]
    flags: List[str]

    @property
    def suspicious(self) -> bool:
        return any(flags.is_suspicious(flag) for flag in self.flags)


def object_facts(record: CallbackObjectRecord, registration_count: int) -> flags.ObjectFacts:
    allow = record.allow_multiple
    return flags.ObjectFacts(
        found_by_directory="directory" in record.routes,
        directory_walked=record.directory_walked,
        found_by_list="list" in record.routes,
        list_walked=record.list_walked,
        signature_ok=record.signature_ok,
        global_mismatch=record.global_mismatch,
        allow_multiple=None if is_absent(allow) else bool(allow),
        registration_count=registration_count,
    )


def routine_facts(
    registration: Registration, attributor: Attributor
) -> "tuple[Optional[Attribution], flags.RegistrationFacts]":
    """Where the routine lies, as classification input (no backlink or registrant facts)."""
    if is_absent(registration.routine):
        return None, flags.RegistrationFacts(None, None, None, False)
    attribution = attributor.attribute(int(registration.routine))
    facts = flags.RegistrationFacts(
        backlink_ok=None,
        in_module=attribution.in_module if attributor.modules_available else None,
        executable=attribution.executable,
        unexpected_registrant=False,
        hidden_module=attribution.hidden_module,
    )
    return attribution, facts


def object_rows(
    record: CallbackObjectRecord,
    registrations: RegistrationList,
    attributor: Attributor,
    rules: ExpectedRegistrants,
) -> List[Row]:
    """The rows of one object with their flags, sorted by severity."""
    regs = registrations.registrations
    obj_facts = object_facts(record, len(regs))
    if not regs:
        return [Row(record, None, None, flags.classify(obj_facts))]
    rows: List[Row] = []
    for reg in regs:
        attribution, facts = routine_facts(reg, attributor)
        if not is_absent(reg.callback_object):
            facts.backlink_ok = int(reg.callback_object) == record.address
        module_name = attribution.module.name if attribution is not None and attribution.module else None
        facts.unexpected_registrant = facts.in_module is not None and rules.is_unexpected(
            record.name if isinstance(record.name, str) else None, module_name
        )
        rows.append(Row(record, reg, attribution, flags.classify(obj_facts, facts)))
    return rows


def loose_row(record: CallbackObjectRecord, registration: Registration, freed: bool, attributor: Attributor) -> Row:
    """The row of a loose registration (found by the scan on no walked list), shown with the
    object its ``CallbackObject`` names (``record``)."""
    attribution, facts = routine_facts(registration, attributor)
    return Row(record, registration, attribution, flags.classify_loose(facts, freed))
