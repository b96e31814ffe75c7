"""The classic kernel pool (Windows 7 to 10 1809, builds up to 17763) as the kernel runs it.

Sources: the WRK's ``base/ntos/ex/pool.c`` (Microsoft's Windows Server 2003 SP1 kernel source:
``ExAllocatePoolWithTag``, ``ExFreePoolWithTag``, ``ExDeferredFreePool``), checked against the
layouts of the real ISFs of 7601, 9600, 14393 and 17763 (every offset and size below comes from
the ISF of the build). ReactOS's ``expool.c`` reimplements this differently (it keeps
``PoolType`` on lookaside frees and has ``.P``/``.L`` lookaside pairs), so it is not followed.

Allocation: pool pages are carved front to back; every block starts with a ``_POOL_HEADER``
(``PreviousSize``, ``PoolIndex``, ``BlockSize`` in header-sized units, ``PoolType``, tag) and
the rest of a page is one free block, so the chain of headers walks the whole page.

Free (``ExFreePoolWithTag``):
1. the header's in-use bit is cleared (``MARK_POOL_HEADER_FREED``): non-paged blocks then read
   ``PoolType`` 0, paged ones 1 (see ``pool.POOL_IN_USE_BIT``); the tag stays;
2. a block of at most 32 units (``POOL_SMALL_LISTS``: 0x200 bytes on x64, 0x100 on x86) goes
   to the freeing processor's lookaside list of its size if that list holds fewer than its
   ``Depth``: ``_KPRCB.PPNPagedLookasideList[BlockSize-1]`` (``PPNxPagedLookasideList`` for
   no-execute pool from Windows 8, ``PPPagedLookasideList`` for paged pool, never for paged
   blocks of pool index 0), a ``_GENERAL_LOOKASIDE_POOL`` inside the KPRCB; the push writes the
   next entry's address (or 0) over the first pointer of the body;
3. otherwise, with ``EX_DELAY_POOL_FREES`` set (the kernel sets it on machines of 127 * 1024
   pages and more), it is pushed on the descriptor's ``PendingFrees`` (next link at body+0);
   when 32 are pending (``EXP_MAXIMUM_POOL_FREES_PENDING``), ``ExDeferredFreePool`` first moves
   them all to ``ListHeads``: each is merged with a free neighbour, gets ``PoolType`` 0 and a
   ``LIST_ENTRY`` at its body, inserted at the head of ``ListHeads[BlockSize-1]``; a block
   merged into a whole page goes back to memory management (the forge unmaps the page).

Big-pool allocations (more than ``POOL_BUDDY_MAX`` bytes, ``big_pool.py``) get whole pages of the
pool's virtual range from ``MiAllocatePoolPages``, no pool header, an entry in
``nt!PoolBigPageTable``; freed, their pages go back to memory management (unmapped).

Not modelled (written down as the issue asks): allocations never reuse freed blocks (the
forge frees after it has allocated); lookaside ``Depth`` tuning (every list has depth 4, the
value the forge chooses); session pool; the lookaside lists' links into the kernel's lists of
lookasides; ``PoolTrackTable``; the descriptors' page counters of big allocations; one
non-paged descriptor serves both executable and no-execute pool.

The pieces: ``allocator.py`` (:class:`ClassicPool`: the descriptors, the globals, frees),
``pages.py`` (pool pages taken from the pool's range and carved into blocks, with the bookkeeping
of each block), ``lookaside.py`` (the processor blocks and their lookaside lists).
"""

from .allocator import ClassicPool

__all__ = ["ClassicPool"]
