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
  (:meth:`~.state.PoolMap.state`);
- every block the metadata describes, in address order (:meth:`~.state.PoolMap.batches`,
  :meth:`~.state.PoolMap.blocks`), and the block holding an address, with its tag and state,
  and its neighbours (:meth:`~.state.PoolMap.block_containing`,
  :meth:`~.state.PoolMap.neighbours`): what ``windows.poolmap`` lists (:mod:`.blocks` filters,
  sums and describes them), and who owns the landing of a callback routine.

``open_pool_map(kernel)`` (:mod:`.maps`) picks the reader for the kernel's build:
:mod:`.segment_heap` from build 18362 (its subsegments decoded by :mod:`.subsegments`),
:mod:`.classic` before it (its pages found by :mod:`.classic_pages`); both read
``nt!PoolBigPageTable`` (:mod:`.big_pages`). Both take a
:class:`~..kernelread.context.KernelContext` (``KernelContext(context, kernel_module_name)``:
nothing of any plugin is needed) and read through its page cache and the structure views it
compiles from the kernel's symbol table; every walk is bounded and every structure validated,
and what the metadata cannot tell is :attr:`~.state.BlockState.UNKNOWN`, never guessed.

:mod:`.scan` is the pool-scan engine on top of them: a plugin declares its targets (tags, the
size their structure needs, a validator) and gets back what its validators kept, each block with
its allocation state; :mod:`.objects` is its target for executive objects of one type (callback
objects, driver objects). Nothing here imports anything of ours but :mod:`..kernelread`.
"""
