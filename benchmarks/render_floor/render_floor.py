"""A benchmark-only Volatility plugin: the cost of printing N rows and nothing else.

It declares the same kernel requirement as ``windows.modules`` (so automagic does the same
work), reads no memory, and yields N precomputed rows with the twelve columns of
``windows.callbackobjects``. Its run time and peak memory are the floor that any plugin
printing N rows through Volatility's ``TreeGrid`` and renderer pays.
"""

from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints


class RenderFloor(interfaces.plugins.PluginInterface):
    """Yields N rows shaped like windows.callbackobjects rows without reading memory."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [
            requirements.ModuleRequirement(name="kernel", description="Windows kernel", architectures=["Intel32", "Intel64"]),
            requirements.IntRequirement(name="rows", description="rows to print", default=20000, optional=True),
        ]

    def _generator(self) -> Iterator[Tuple[int, Tuple]]:
        for index in range(self.config.get("rows", 20000)):
            yield 0, (
                format_hints.Hex(0x9A8000004FA0 + (index // 10) * 0xC0), f"\\Callback\\ScaleObject{index // 10:05d}",
                True, "list+directory+scan", format_hints.Hex(0x9A8000100000 + index * 0x40),
                format_hints.Hex(0xF80313541480), format_hints.Hex(index % 10), 0, False,
                "tcpip.sys", "tcpip.sys+0x1480", "",
            )

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid(
            [("Object", format_hints.Hex), ("Name", str), ("AllowMultiple", bool), ("FoundBy", str),
             ("Registration", format_hints.Hex), ("Routine", format_hints.Hex), ("Context", format_hints.Hex),
             ("Busy", int), ("UnregisterWaiting", bool), ("Module", str), ("Symbol", str), ("Flags", str)],
            self._generator(),
        )
