"""A built image and its writers: the memory in each format of ``dump.FORMATS``, the kernel's
symbol table where ``vol -s`` looks for it, and ``truth.json``.

:meth:`ImageForge.build <tests.forge.image.forge.ImageForge.build>` returns a :class:`ForgedImage`.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Tuple

from ..memory.physical import canonical
from . import dump

if TYPE_CHECKING:
    from .forge import ImageForge


def truth_text(truth: Dict[str, Any]) -> str:
    """truth.json: indented, but one line per pool block (tens of thousands on ``scale``)."""
    text = json.dumps(dict(truth, blocks=[]), indent=1)
    blocks = ",\n  ".join(json.dumps(block, separators=(",", ":")) for block in truth["blocks"])
    return text.replace('"blocks": []', '"blocks": [\n  ' + blocks + "\n ]" if blocks else '"blocks": []', 1)


@dataclass
class ForgedImage:
    """A built image: its ground truth, and writers for every output format of ``dump.FORMATS``."""

    forge: "ImageForge"
    truth: dict

    RAW_NAME = dump.FORMATS["raw"].file_name
    DUMP_NAME = dump.FORMATS["dump"].file_name
    TRUTH_NAME = "truth.json"
    SYMBOLS_DIR = "symbols"

    @property
    def formats(self) -> Tuple[str, ...]:
        """The formats this image can be written in (the debugger engine's exist for x64 only)."""
        return dump.formats_for(self.forge.layout.is_64bit)

    def machine_facts(self) -> dump.MachineFacts:
        """What a crash dump's first header says about this machine."""
        forge = self.forge
        layout = forge.layout

        def kernel_address(name: str) -> int:
            return canonical(forge.kernel.base + layout.symbol(name)) if layout.has_symbol(name) else 0

        return dump.MachineFacts(
            is_64bit=layout.is_64bit, pae=layout.pae, dtb=forge.machine.plan.dtb, build=layout.build or 0,
            ps_loaded_module_list=kernel_address("PsLoadedModuleList"),
            ps_active_process_head=kernel_address("PsActiveProcessHead"),
            kd_debugger_data_block=kernel_address("KdDebuggerDataBlock"),
        )

    def write_format(self, name: str, path: Path) -> Path:
        """Write the memory in format ``name`` (a key of ``dump.FORMATS``) to ``path``."""
        if name not in dump.FORMATS:
            raise ValueError(f"unknown format {name!r}; known: {', '.join(dump.FORMATS)}")
        fmt = dump.FORMATS[name]
        if fmt.dump_type is None:
            dump.write_raw(self.forge.machine.physical, path)
        else:
            dump.write_crash_dump(self.forge.machine.physical, path, self.machine_facts(), fmt)
        return path

    def write_symbols(self, directory: Path) -> Path:
        """The kernel's symbol table where ``vol -s DIR`` looks for it."""
        layout = self.forge.layout
        target = directory / "windows" / layout.pdb_name / f"{layout.guid}-{layout.age}.json.xz"
        target.parent.mkdir(parents=True, exist_ok=True)
        if layout.source_path is not None and layout.source_path.suffix == ".xz":
            target.write_bytes(layout.source_path.read_bytes())
        else:
            target.write_bytes(layout.isf_bytes())
        return directory

    def write(self, out_dir: Path, formats: Iterable[str] = dump.DEFAULT_FORMATS) -> Dict[str, Path]:
        """Write ``symbols/``, ``truth.json`` and the image in each of ``formats`` (names of
        ``dump.FORMATS``: ``raw``, ``dump``, ``bitmap``, ``live``, ``kernel``, ``kernel-user``,
        ``complete``; ``self.formats`` lists those this image's architecture has). Returns the
        paths by format name, plus ``symbols`` and ``truth``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"symbols": self.write_symbols(out_dir / self.SYMBOLS_DIR), "truth": out_dir / self.TRUTH_NAME}
        paths["truth"].write_text(truth_text(self.truth))
        for name in formats:
            paths[name] = self.write_format(name, out_dir / dump.FORMATS[name].file_name)
        return paths
