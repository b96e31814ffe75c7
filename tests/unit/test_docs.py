"""The triage documentation covers the whole flag vocabulary, with an ATT&CK line where suspicious."""

import re
from pathlib import Path

from volatility3_plugins.schema import flags

TRIAGE = Path(__file__).resolve().parents[2] / "docs" / "TRIAGE.md"


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
