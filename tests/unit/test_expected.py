"""The data-driven expected-registrant rules."""

import json

from volatility3_plugins.windows.callback_objects import expected

PATCHGUARD = "\\Callback\\542875F90F9B47F497B64BA219CACF69"


def test_packaged_file_is_documented_and_every_entry_cites_its_evidence():
    with open(expected.DEFAULT_PATH) as handle:
        document = json.load(handle)
    assert any("How to add an entry" in line for line in document["_comment"])
    first = document["objects"][0]
    assert first["name"] == PATCHGUARD
    assert first["allowed_modules"] == ["mssecflt.sys", "msseccore.sys"]
    for entry in document["objects"]:
        assert entry["reason"] and entry["builds"] and entry["sources"], entry["name"]
        assert all(source.startswith("https://") or "report" in source for source in entry["sources"]), entry["name"]
    open_by_design = {"PowerState", "SetSystemTime", "ProcessorAdd", "BootDriver", "SeImageVerificationDriverInfo",
                      "Phase1InitComplete"}
    assert not {entry["name"].rsplit("\\", 1)[-1] for entry in document["objects"]} & open_by_design


def test_rules():
    rules = expected.load()
    assert rules.covers(PATCHGUARD)
    assert not rules.is_unexpected(PATCHGUARD, "mssecflt.sys")
    assert not rules.is_unexpected(PATCHGUARD.lower(), "MsSecFlt.SYS")  # case-insensitive
    assert not rules.is_unexpected(PATCHGUARD, "msseccore.sys")
    assert rules.is_unexpected("\\Callback\\WdProcessNotificationCallback", "WdFilter.sys")
    assert not rules.is_unexpected("\\Callback\\WdProcessNotificationCallback", "WdNisDrv.sys")
    assert rules.is_unexpected(PATCHGUARD, "evil.sys")
    assert rules.is_unexpected(PATCHGUARD, None)  # routine in no module
    assert not rules.is_unexpected("\\Callback\\PowerState", "evil.sys")  # not covered
    assert not rules.is_unexpected(None, "evil.sys")  # unnamed object


def test_malformed_entries_skipped(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"objects": [{"name": 3}, {"name": "\\Callback\\X", "allowed_modules": ["a.sys"]}]}))
    rules = expected.load(str(path))
    assert rules.is_unexpected("\\Callback\\X", "b.sys")
    assert len(rules.rules) == 1


def test_unreadable_file_disables_check(tmp_path):
    rules = expected.load(str(tmp_path / "missing.json"))
    assert not rules.is_unexpected(PATCHGUARD, "evil.sys")
