"""Says what is wrong with the file itself: one warning before Volatility's own answer.

Volatility's answer to an empty file, a text file, an archive, or a raw image cut short is the
same as to a memory image of an operating system it has no symbols for: "Unable to validate the
plugin requirements". This stacker looks at the bare file once, in the first round of
``LayerStacker`` (``stack_order`` 30: after the file formats' stackers, which stack on a file they
recognise and so end the round before it; before the Windows and Linux stackers, which find a
kernel in a raw image), and never stacks anything:

- a file that is certainly no memory image (``common/file_kind.py``: empty, smaller than a page,
  text, an archive or compressed file, a user-mode minidump, random data) is named as such;
- a raw x64 Windows image (no header, the processor start block in its first megabyte): when
  some of its kernel's page tables lie past the end of the file (a look at the upper levels only,
  milliseconds on any image), the pages those tables map write-back (``common/page_tables.py``)
  past the end are counted and said, whether or not a kernel is found next. A cut that leaves
  every page table in the file is said by the plugin's own check (``kernelread/image_extent.py``).
"""

import logging
from typing import Optional

from volatility3.framework import constants, interfaces

from ..common import crashdump_header, file_kind, page_tables
from ..common.said_once import SaidOnce

vollog = logging.getLogger(__name__)

#: One warning per file per process: the stacker runs again for every automagic pass.
_said = SaidOnce(vollog)


def raw_truncation(read: page_tables.Read, file_size: int) -> Optional[str]:
    """What a raw x64 Windows image lacks, from its processor start block's page-table root;
    None when it lacks nothing or has no start block."""
    dtb = page_tables.low_stub_dtb(read)
    if dtb is None or dtb >= file_size:
        return None
    # The stacker runs before every plugin on every raw image: only a file that leaves some page
    # table past its end pays for counting every page its tables map.
    if not page_tables.tables_past(read, dtb, page_tables.X64, file_size, page_tables.X64_KERNEL_HALF):
        return None
    missing, total = page_tables.pages_past(read, dtb, page_tables.X64, file_size, page_tables.X64_KERNEL_HALF)
    return page_tables.truncation_text(missing, total, file_size) if missing else None


class FileCheckStacker(interfaces.automagic.StackerLayerInterface):
    """Stacks nothing; says what is wrong with the file (see the module docstring)."""

    stack_order = 30

    @classmethod
    def stack(
        cls,
        context: interfaces.context.ContextInterface,
        layer_name: str,
        progress_callback: constants.ProgressCallback = None,
    ) -> Optional[interfaces.layers.DataLayerInterface]:
        layer = context.layers[layer_name]
        if layer.dependencies:
            return None  # a layer was stacked: the file was recognised
        source = str(layer.config.get("location", layer.name))
        if not _said.log(logging.DEBUG, f"{source}: checked", key=(source, "checked")):
            return None
        read = crashdump_header.layer_reader(layer)
        size = layer.maximum_address + 1
        said = file_kind.describe(read, size) or raw_truncation(read, size)
        if said is not None:
            vollog.warning(f"{source}: {said}")
        return None
