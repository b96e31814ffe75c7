"""The run diagnostics: one warning per cause, subjects named then counted, details at info level."""

import logging

from volatility3_plugins.windows.kernelread import diagnostics


def test_one_warning_per_cause_naming_the_first_subjects_and_counting_the_rest(caplog):
    caplog.set_level(logging.INFO)
    said = diagnostics.Diagnostics(logging.getLogger("unit-diagnostics"))
    for index in range(20):
        said.warning("Lists not walked to their end", f"registrations of \\Callback\\Object{index}", f"broke at {index}")
    said.warning("Lists not walked to their end", "registrations of \\Callback\\Object3")  # a repeat: once
    said.warning("Heap metadata incomplete")
    said.warning("Heap metadata incomplete")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING], "nothing said before the flush"
    said.flush()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "Lists not walked to their end: registrations of \\Callback\\Object0, registrations of \\Callback\\Object1, "
        "registrations of \\Callback\\Object2 and 17 more",
        "Heap metadata incomplete",
    ]
    assert said.warnings == warnings
    assert sum(r.levelno == logging.INFO for r in caplog.records) == 20, "each subject's detail, once"
    said.flush()
    said.warning("Heap metadata incomplete")
    said.flush()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2, "a cause said once per run"


def test_degrading_routes_are_the_incomplete_and_unavailable_ones():
    said = diagnostics.Diagnostics()
    said.route("module list", diagnostics.COMPLETE, "14 modules")
    said.route("scan", diagnostics.SKIPPED, "--no-scan")
    said.route("list", diagnostics.NOT_ON_THIS_BUILD, "before Windows 8.1")
    said.route("directory", diagnostics.INCOMPLETE, "12 objects")
    said.route("global", diagnostics.UNAVAILABLE)
    assert said.degrading_routes() == ["directory incomplete (12 objects)", "global unavailable"]
