"""Floor 3, pool allocators: how the build's kernel hands out pool blocks and takes them back.

- ``pool.py``: what every allocator shares: :class:`PoolBlock` and its states, pool kinds,
  ``_POOL_HEADER`` packing, the :class:`PoolAllocator` interface, boot noise;
- ``big_pool.py``: ``nt!PoolBigPageTable``, for allocations larger than a pool page;
- ``classic_pool/``: the pool of Windows 7 to 10 1809 (builds up to 17763);
- ``segment_heap/``: the kernel's segment heap of Windows 10 1903 and later (18362+).

An allocator writes through the bare ``memory.machine.Machine``; the kernel floor's
``KernelMachine`` picks the build's allocator and installs it. Imports: memory, profiles.
"""
