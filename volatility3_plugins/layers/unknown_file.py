"""Says what a file is when no layer recognises it as a memory image (``common/file_kind.py``).

Volatility's answer to an empty file, a text file or an archive is the same as to a memory image
of an operating system it has no symbols for: "Unable to validate the plugin requirements". This
stacker runs after every other one (``stack_order`` 100; each round of ``LayerStacker`` stops at the
first stacker that stacks), so it is called on the bare file only when no layer recognised it,
and then says in one warning what the file is. It never stacks anything.
"""

import logging
from typing import Optional

from volatility3.framework import constants, interfaces

from ..common import crashdump_header, file_kind
from ..common.said_once import SaidOnce

vollog = logging.getLogger(__name__)

#: One warning per file per process: the stacker runs again for every automagic pass.
_said = SaidOnce(vollog)


class UnrecognisedFileStacker(interfaces.automagic.StackerLayerInterface):
    """Stacks nothing; names what an unrecognised file is."""

    stack_order = 100

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
        said = file_kind.describe(crashdump_header.layer_reader(layer), layer.maximum_address + 1)
        if said is not None:
            source = str(layer.config.get("location", layer.name))
            _said.log(logging.WARNING, f"{source}: {said}", key=source)
        return None
