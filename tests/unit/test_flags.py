"""The flag vocabulary, severity order and classification, with the evidence rule: missing,
unreadable or zeroed memory and walks that did not close never raise a suspicious flag."""

import pytest

from volatility3_plugins.schema import flags
from volatility3_plugins.windows.callback_objects import classify
from volatility3_plugins.windows.kernelread import diagnostics

CLEAN_OBJECT = dict(
    body_readable=True,
    signature_ok=True,
    list_state=diagnostics.COMPLETE,
    found_by_list=True,
    directory_complete=True,
    found_by_directory=True,
    global_mismatch=False,
    allow_multiple=True,
    registration_count=1,
)
CLEAN_REG = dict(readable=True, backlink_ok=True, in_module=True, executable=True, unexpected_registrant=False)


def _obj(**changes):
    return classify.ObjectFacts(**dict(CLEAN_OBJECT, **changes))


def _reg(**changes):
    return classify.RegistrationFacts(**dict(CLEAN_REG, **changes))


def test_vocabulary_is_the_contract():
    # PHASE2's order: code-location findings first (the three of issue 18 among them).
    assert flags.SUSPICIOUS == (
        "outside_modules", "hidden_module", "trampoline", "non_executable", "code_cave", "mid_function",
        "unlinked_object", "orphan_registration", "bad_backlink", "multiple_on_exclusive", "bad_signature",
        "unexpected_registrant", "global_mismatch", "not_in_baseline",
    )
    assert set(flags.INFORMATIONAL) == {"freed", "not_in_directory", "allocation_unknown", "list_incomplete", "unreadable"}
    assert len(flags.SEVERITY_ORDER) == len(set(flags.SEVERITY_ORDER)) == 19


def test_sort_puts_suspicious_before_informational_and_dedups():
    mixed = ["not_in_directory", "global_mismatch", "outside_modules", "not_in_directory"]
    assert flags.sort_flags(mixed) == ["outside_modules", "global_mismatch", "not_in_directory"]
    assert flags.sort_flags([]) == []
    ranks = [flags.SEVERITY_ORDER.index(f) for f in flags.SUSPICIOUS]
    assert max(ranks) < min(flags.SEVERITY_ORDER.index(f) for f in flags.INFORMATIONAL)


def test_clean_row_has_no_flags():
    assert classify.classify(_obj(), _reg()) == []
    assert classify.classify(_obj()) == []


@pytest.mark.parametrize(
    "obj_changes,reg_changes,expected",
    [
        ({}, {"in_module": False, "executable": None}, ["outside_modules"]),
        ({}, {"executable": False}, ["non_executable"]),
        ({}, {"trampoline": True}, ["trampoline"]),
        ({}, {"mid_function": True}, ["mid_function"]),
        ({}, {"code_cave": True}, ["code_cave"]),
        ({"found_by_list": False}, {}, ["unlinked_object"]),
        ({}, {"backlink_ok": False}, ["bad_backlink"]),
        ({"allow_multiple": False, "registration_count": 2}, {}, ["multiple_on_exclusive"]),
        ({"signature_ok": False}, {}, ["bad_signature"]),
        ({}, {"unexpected_registrant": True}, ["unexpected_registrant"]),
        ({"global_mismatch": True}, {}, ["global_mismatch"]),
        ({"found_by_directory": False}, {}, ["not_in_directory"]),
        ({"found_by_list": False, "list_state": diagnostics.INCOMPLETE}, {}, ["list_incomplete"]),
        ({}, {"in_module": None, "module_list_incomplete": True}, ["list_incomplete"]),
        ({"body_readable": False, "signature_ok": False}, {}, ["unreadable"]),
        ({}, {"readable": False}, ["unreadable"]),
    ],
)
def test_each_flag(obj_changes, reg_changes, expected):
    assert classify.classify(_obj(**obj_changes), _reg(**reg_changes)) == expected


def test_unknowns_raise_nothing():
    # Unreadable fields and routes that could not run are not evidence of tampering.
    assert classify.classify(
        _obj(list_state=None, found_by_list=False, directory_complete=False,
             found_by_directory=False, allow_multiple=None, registration_count=3),
        _reg(backlink_ok=None, in_module=None, executable=None),
    ) == []


def test_unreadable_object_is_never_accused():
    """A body that is missing or zeros: not bad_signature, not unlinked, not a global mismatch."""
    result = classify.classify(
        _obj(body_readable=False, signature_ok=False, found_by_list=False, global_mismatch=True)
    )
    assert result == ["unreadable"]


def test_zeroed_registration_is_never_accused():
    result = classify.classify(_obj(), _reg(readable=False, backlink_ok=False, in_module=False, executable=False))
    assert result == ["unreadable"]


def test_exclusive_object_with_one_registration_is_clean():
    assert classify.classify(_obj(allow_multiple=False, registration_count=1), _reg()) == []


def test_object_flags_on_row_without_registration():
    result = classify.classify(_obj(found_by_directory=False, found_by_list=False, signature_ok=False))
    assert result == ["unlinked_object", "bad_signature", "not_in_directory"]


def test_combined_sorted_by_severity():
    result = classify.classify(
        _obj(found_by_directory=False, global_mismatch=True, allow_multiple=False, registration_count=2),
        _reg(in_module=False, executable=None, backlink_ok=False, unexpected_registrant=True),
    )
    assert result == flags.sort_flags(result)
    assert result[0] == "outside_modules" and result[-1] == "not_in_directory"
    assert set(result) == {
        "outside_modules", "bad_backlink", "multiple_on_exclusive",
        "unexpected_registrant", "global_mismatch", "not_in_directory",
    }


def test_loose_registrations():
    worst = classify.RegistrationFacts(
        backlink_ok=False, in_module=False, executable=False, unexpected_registrant=True, hidden_module=True,
        trampoline=True, mid_function=True, code_cave=True,
    )
    # Freed pool is full of stale blocks, and a block the allocator cannot place is no better:
    # nothing in either is evidence.
    assert classify.classify_loose(worst, "freed", owner_list_complete=True) == [flags.FREED]
    assert classify.classify_loose(worst, "unknown", owner_list_complete=True) == [flags.ALLOCATION_UNKNOWN]
    assert classify.classify_loose(worst, "allocated", owner_list_complete=True) == [
        flags.OUTSIDE_MODULES, flags.HIDDEN_MODULE, flags.TRAMPOLINE, flags.NON_EXECUTABLE, flags.CODE_CAVE,
        flags.MID_FUNCTION, flags.ORPHAN_REGISTRATION
    ]
    clean = classify.RegistrationFacts(in_module=True, executable=True)
    assert classify.classify_loose(clean, "allocated", owner_list_complete=True) == [flags.ORPHAN_REGISTRATION]
    # Some list did not close: it may be a member past the break.
    assert classify.classify_loose(clean, "allocated", owner_list_complete=False) == [flags.LIST_INCOMPLETE]


def test_scan_only_object_of_unknown_allocation_is_not_called_unlinked():
    assert classify.classify(_obj(found_by_list=False, found_by_directory=False, allocation_unknown=True)) == [
        "not_in_directory", "allocation_unknown"]
