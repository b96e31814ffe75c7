"""Readers of the Windows kernel's own pool allocators, for any pool-scanning plugin.

Every pool scanner has the freed-block problem: memory that was freed keeps its old contents,
and on Windows 10 1903 and later (the segment heap) a freed small block keeps its pool header
too, tag and allocated pool type included: only the allocator's metadata says it is free. A
scanner that judges blocks by their headers reports every unregistered callback, every closed
object, every unloaded driver's loader entry as alive. These modules ask the allocator instead
and answer the two questions a scanner needs:

- where do the blocks of a pool lie (:meth:`~.state.PoolMap.regions`), so the scan reads those
  ranges instead of the whole kernel half of the address space;
- is the block whose pool header is at an address allocated, freed or unknown
  (:meth:`~.state.PoolMap.state`).

``open_pool_map(kernel)`` picks the reader for the kernel's build: :mod:`.segment_heap` from build
18362, :mod:`.classic` before it. Both take a ``KernelContext`` (``CallbackObjects
.build_kernel_context`` builds one for any plugin) and read through its page cache and the
structure views it compiles from the kernel's symbol table; every walk is bounded and every
structure validated, and what the metadata cannot tell is ``unknown``, never guessed.
"""
