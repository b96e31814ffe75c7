"""Pure helpers of the discovery routes (the routes themselves run against forged images)."""

from volatility3.plugins.windows.callback_objects import discovery


def test_found_by_fixed_order_and_dedup():
    assert discovery.format_found_by({"global", "list", "directory"}) == "list+directory+global"
    assert discovery.format_found_by(["scan", "directory", "directory"]) == "directory+scan"
    assert discovery.format_found_by({"list"}) == "list"


def test_expected_global_names():
    assert discovery.expected_global_name("ExCbPowerState") == "\\Callback\\PowerState"
    assert (
        discovery.expected_global_name("ExCbSeImageVerificationDriverInfo")
        == "\\Callback\\SeImageVerificationDriverInfo"
    )
    assert len(discovery.GLOBAL_SYMBOLS) == 7
