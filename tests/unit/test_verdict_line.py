"""The verdict line: the plugin's writer and the sweep's parser are one definition, and read back
exactly what the other writes."""

import pytest

from volatility3_plugins.schema import verdict_line
from volatility3_plugins.schema.verdict_line import VerdictLine

#: What the demo (the rootkit scenario on Windows 10) ends with.
DEMO = (
    "Verdict: build 19041, kernel PDB AEF579907CA143A7E870F25E5911D6DE-1; 31 callback objects; 49 registrations "
    "and 8 loose; 11 suspicious rows (outside_modules 2, hidden_module 1, non_executable 1, unlinked_object 1, "
    "orphan_registration 1, bad_backlink 1, multiple_on_exclusive 2, bad_signature 1, unexpected_registrant 1, "
    "global_mismatch 1); informational: freed 7, not_in_directory 5; routes: module list complete (14 modules), "
    "scan complete (segment heap, 312 KiB: 31 objects, 57 registration blocks, 15 loader entries), list complete "
    "(30 objects), directory complete (27 objects), global complete (7 pointers)"
)

LINES = [
    VerdictLine(19041, ("AEF579907CA143A7E870F25E5911D6DE", 1), 31, 49, 8, 11,
                {"outside_modules": 2, "freed": 7, "not_in_directory": 5},
                routes=("module list complete (14 modules)", "scan complete (segment heap, 312 KiB: 31 objects)")),
    VerdictLine(None, None, 0, 0, None, 0, routes=("module list unavailable (no symbol)", "scan skipped (--no-scan)")),
    VerdictLine(7601, None, 3, 5, 0, 1, {"not_in_baseline": 1}, baseline=(12, 1), routes=("list not on this build",)),
    VerdictLine(26100, ("0123ABCD", 2), 1, 2, None, 0, {"list_incomplete": 2}, baseline=(4, 3)),
    VerdictLine(19041, None, 18, 10, 0, 0, {"list_incomplete": 9}, routes=("module list incomplete (8 modules)",),
                evidence=()),
    VerdictLine(19041, None, 18, 10, 0, 0, {"list_incomplete": 9}, baseline=(4, 3),
                routes=("module list incomplete (8 modules)", "registrations incomplete (18 lists, 14 not walked to their end)"),
                evidence=("crash dump truncated (461 of 4,608 pages missing: 1.8 MiB, 10%)",
                          "module list incomplete (8 modules)",
                          "registrations incomplete (18 lists, 14 not walked to their end)")),
    # A detail may hold "; " (inside its parentheses): the line still splits where it should.
    VerdictLine(19041, None, 31, 49, 8, 8, {"unlinked_object": 1},
                routes=("code incomplete (34 routines decoded; 2 unreadable)",),
                evidence=("code incomplete (34 routines decoded; 2 unreadable)",)),
]


@pytest.mark.parametrize("line", LINES)
def test_what_is_written_is_read_back(line):
    text = verdict_line.format(line)
    assert text.startswith(verdict_line.PREFIX) and "\n" not in text
    assert verdict_line.parse(text) == line
    assert verdict_line.parse("WARNING  volatility3.plugins.windows.callbackobjects: " + text) == line


def test_the_demo_line_reads_back_whole():
    found = verdict_line.parse("WARNING  volatility3.plugins.windows.callbackobjects: " + DEMO)
    assert (found.build, found.kernel_pdb, found.objects, found.registrations, found.loose) == (
        19041, ("AEF579907CA143A7E870F25E5911D6DE", 1), 31, 49, 8)
    assert found.suspicious_rows == 11 and found.flags["multiple_on_exclusive"] == 2 and found.flags["freed"] == 7
    assert found.routes[1] == "scan complete (segment heap, 312 KiB: 31 objects, 57 registration blocks, 15 loader entries)"
    assert len(found.routes) == 5
    assert verdict_line.format(found) == DEMO


def test_evidence_is_said_after_the_suspicious_rows_and_lines_without_it_still_parse():
    degraded = verdict_line.format(LINES[-2])
    assert "; 0 suspicious rows; evidence degraded (crash dump truncated (461 of 4,608 pages missing: 1.8 MiB, " in degraded
    assert verdict_line.parse(degraded).degraded
    complete = verdict_line.parse(verdict_line.format(LINES[-3]))
    assert complete.evidence == () and not complete.degraded
    older = verdict_line.parse(DEMO)
    assert older.evidence is None and not older.degraded, "a line of an older plugin says nothing of its evidence"


def test_flags_are_written_by_severity_in_two_groups():
    text = verdict_line.format(VerdictLine(1, None, 1, 1, None, 2, {"freed": 1, "bad_signature": 1, "outside_modules": 1}))
    assert "2 suspicious rows (outside_modules 1, bad_signature 1); informational: freed 1; routes: " in text


def test_anything_else_is_no_verdict():
    assert verdict_line.locate("WARNING  something else") is None
    assert verdict_line.parse("WARNING  something else") is None
    assert verdict_line.parse("Verdict: build 19041; garbled") is None
    assert verdict_line.parse(DEMO.replace("31 callback objects", "31 objects")) is None
    assert verdict_line.parse(DEMO.replace("; informational: ", "; extra: ")) is None
    assert verdict_line.locate("x: " + DEMO) == DEMO
