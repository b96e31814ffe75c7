"""Pure helpers of the routes (the routes themselves run against forged images)."""

from volatility3_plugins.windows.callback_objects import routes


def test_found_by_fixed_order_and_dedup():
    assert routes.format_found_by({"global", "list", "directory"}) == "list+directory+global"
    assert routes.format_found_by(["scan", "directory", "directory"]) == "directory+scan"
    assert routes.format_found_by({"list"}) == "list"


def test_expected_global_names():
    assert routes.expected_global_name("ExCbPowerState") == "\\Callback\\PowerState"
    assert (
        routes.expected_global_name("ExCbSeImageVerificationDriverInfo")
        == "\\Callback\\SeImageVerificationDriverInfo"
    )
