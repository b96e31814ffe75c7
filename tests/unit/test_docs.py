"""The triage documentation covers the whole flag vocabulary, with an ATT&CK line where suspicious,
in one flag table at its top; the README names every flag as a link to its section and holds no
flag table of its own (issue 19: one flag table, not two; a README read in five minutes)."""

import re
from pathlib import Path

from volatility3_plugins.schema import flags

REPO = Path(__file__).resolve().parents[2]
TRIAGE = REPO / "docs" / "TRIAGE.md"
README = REPO / "README.md"
#: About 150 lines (issue 19); design, fleet triage, the forge and benchmark figures have pages.
README_MAX_LINES = 175


def sections():
    text = TRIAGE.read_text()
    found = {}
    for match in re.finditer(r"^### (\w+) \((suspicious|informational)\)\n(.*?)(?=^### |\Z)", text, re.S | re.M):
        found[match.group(1)] = (match.group(2), match.group(3))
    return found


def test_every_flag_has_a_section_with_its_severity():
    documented = sections()
    assert set(documented) == set(flags.SEVERITY_ORDER)
    for flag, (kind, _) in documented.items():
        assert (kind == "suspicious") == flags.is_suspicious(flag), flag


def test_suspicious_flags_give_causes_next_step_and_attack_mapping():
    for flag, (kind, body) in sections().items():
        if kind == "suspicious":
            assert "**Legitimate causes:**" in body and "**Next step:**" in body, flag
            assert re.search(r"\*\*ATT&CK:\*\* T\d{4}", body), flag


#: ATT&CK techniques a Windows kernel finding must not be mapped to, and why.
NOT_WINDOWS_TECHNIQUES = {
    "T1547.006": "Kernel Modules and Extensions covers Linux and macOS only (Windows drivers: T1543.003)",
}


def test_attack_mappings_are_windows_techniques():
    text = TRIAGE.read_text()
    for technique, why in NOT_WINDOWS_TECHNIQUES.items():
        assert technique not in text, why


def test_sections_follow_the_severity_order():
    assert list(sections()) == list(flags.SEVERITY_ORDER)


def severity(flag):
    return "suspicious" if flags.is_suspicious(flag) else "informational"


def test_flag_table_at_the_top_lists_every_flag_in_order_with_its_severity():
    text = TRIAGE.read_text()
    table = text.split("## Flags at a glance\n", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^## (.+)$", text, re.M).group(1) == "Flags at a glance", "the table opens the guide"
    rows = re.findall(r"^\| \[`(\w+)`\]\(#([\w-]+)\) \| (\w+) \|", table, re.M)
    assert [name for name, _, _ in rows] == list(flags.SEVERITY_ORDER)
    for name, anchor, kind in rows:
        assert kind == severity(name) and anchor == f"{name}-{kind}", name


def test_readme_links_every_flag_to_its_section_and_has_no_flag_table():
    text = README.read_text()
    for flag in flags.SEVERITY_ORDER:
        assert f"[`{flag}`](docs/TRIAGE.md#{flag}-{severity(flag)})" in text, flag
    rows = [line for line in text.splitlines() if re.match(r"\| `(%s)` \|" % "|".join(flags.SEVERITY_ORDER), line)]
    assert not rows, "the flag table is docs/TRIAGE.md's; the README links to it"


def test_readme_stays_a_page():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: details belong in docs/ (docs/DESIGN.md, ...)"
