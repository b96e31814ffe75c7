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


def test_every_excb_global_of_the_symbol_table_is_checked(tmp_path):
    """The global route takes every nt!ExCb* the kernel's ISF has, including ones this project
    never saw (the seed's Windows 11 24H2 list has ExCbSeImageVerificationBlockInfo)."""
    import json

    from volatility3.framework.symbols import intermed
    from volatility3_plugins.windows.callback_objects import isf
    from volatility3_plugins.windows.callback_objects.context import CallbackContext

    from tests.unit import memory

    context, layer = memory.make_context()
    ours = memory.load_our_table(context)
    symbols = {"ExCbPowerState": 0x100, "ExCbSeImageVerificationBlockInfo": 0x108, "ExCbNull": 0x110, "ExCreateCallback": 0x200}
    table = {
        "metadata": {"format": "6.2.0", "producer": {"name": "tests", "version": "1"}},
        "symbols": {name: {"address": address} for name, address in symbols.items()},
        "enums": {},
        "base_types": {"pointer": {"kind": "int", "size": 8, "signed": False, "endian": "little"}},
        "user_types": {},
    }
    path = tmp_path / "nt.json"
    path.write_text(json.dumps(table))
    context.symbol_space.append(intermed.IntermediateSymbolTable(context, "test.nt", "nt", isf_url=path.as_uri()))
    module = context.module("nt", layer_name="test", offset=memory.KERNEL_BASE)
    kernel = CallbackContext(context, module.name, ours, isf.Layout(True, True))
    layer.map(memory.KERNEL_BASE, 0x1000)
    layer.ptr(memory.KERNEL_BASE + 0x100, 0xFFFF9A8000001000)
    layer.ptr(memory.KERNEL_BASE + 0x108, 0xFFFF9A8000002000)
    assert routes.global_symbols(kernel) == ["ExCbNull", "ExCbPowerState", "ExCbSeImageVerificationBlockInfo"]
    assert routes.from_globals(kernel) == {
        "ExCbPowerState": 0xFFFF9A8000001000 & memory.MASK48,
        "ExCbSeImageVerificationBlockInfo": 0xFFFF9A8000002000 & memory.MASK48,
    }
    assert routes.expected_global_name("ExCbSeImageVerificationBlockInfo") == "\\Callback\\SeImageVerificationBlockInfo"
