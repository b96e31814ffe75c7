"""The run context of ``windows.callbackobjects``: the kernel's, plus our two structures and the
pool allocator's reader.

``_CALLBACK_OBJECT`` and ``_CALLBACK_REGISTRATION`` are in no PDB: their views are compiled from
our own ISF (:mod:`.isf`), the file that fits the kernel (pointer size, and whether it has the
Windows 8.1 global object list). Everything else a run shares is the generic
:class:`~..kernelread.context.KernelContext`'s.
"""

import functools
from typing import Optional

from volatility3.framework import interfaces

from ..kernelpool.maps import open_pool_map
from ..kernelpool.state import PoolMap
from ..kernelread.context import KernelContext
from ..kernelread.views import StructView, type_name
from . import isf


class CallbackContext(KernelContext):
    """A :class:`KernelContext` with the views of ``_CALLBACK_OBJECT`` and
    ``_CALLBACK_REGISTRATION`` compiled once (``callback_object``, ``registration``)."""

    without_object_headers = "directory route, names and object scan skipped"

    def __init__(
        self,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        callback_table_name: str,
        layout: isf.Layout,
    ) -> None:
        super().__init__(context, kernel_module_name)
        #: Which of our ISF files was loaded, and the name of its symbol table.
        self.layout = layout
        self.callback_table = callback_table_name
        self.callback_object = StructView.compile(
            context,
            type_name(callback_table_name, "_CALLBACK_OBJECT"),
            [
                "Signature",
                "RegisteredCallbacks.Flink",
                "AllowMultipleCallbacks",
                "ExpCallbackList.Flink",
            ],
            self.mask,
            booleans=["AllowMultipleCallbacks"],
            optional=["ExpCallbackList.Flink"],
        )
        self.registration = StructView.compile(
            context,
            type_name(callback_table_name, "_CALLBACK_REGISTRATION"),
            [
                "Link.Flink",
                "CallbackObject",
                "CallbackFunction",
                "CallbackContext",
                "Busy",
                "UnregisterWaiting",
            ],
            self.mask,
            booleans=["UnregisterWaiting"],
        )

    @functools.cached_property
    def pool_map(self) -> PoolMap:
        """The reader of the kernel's pool allocator, opened once (on first use) for the scan
        and for naming the pool blocks routines hand control to."""
        return open_pool_map(self)

    @classmethod
    def build(
        cls,
        context: interfaces.context.ContextInterface,
        kernel_module_name: str,
        config_path: str,
        callback_table_name: Optional[str] = None,
    ) -> "CallbackContext":
        """Chooses our ISF file for this kernel, loads it (unless ``callback_table_name`` names
        one already loaded) and builds the context."""
        layout = isf.Layout.for_kernel(context, kernel_module_name)
        if callback_table_name is None:
            callback_table_name = isf.load_table(context, config_path, layout)
        return cls(context, kernel_module_name, callback_table_name, layout)
