"""The kernel's segment heap (Windows 10 1903, build 18362, and later) as the pool allocator.

Sources: MemProcFS ``vmm/vmmwinpool.c`` (Ulf Frisk: a C reader of exactly this metadata),
Yarden Shafir's PoolViewer (``PoolData/PoolData.cpp``), Bayet & Fariello, "Scoop the Windows 10
pool!" (SSTIC 2020) and Yason, "Windows 10 Segment Heap Internals" (Black Hat USA 2016). Every
offset, size and bit position comes from the ISF of the build (x64 from the real ISFs, 19041
x86 from Volatility 2's overlay); nothing below hard-codes one.

The chain a reader walks, all of which the forge writes:

- ``nt!ExPoolState`` (``_EX_POOL_HEAP_MANAGER_STATE``): ``HeapManager.Globals`` (its first
  pointer) leads to ``nt!RtlpHpHeapGlobals`` (``HeapKey``, ``LfhKey``); ``NumberOfPools`` (1);
  ``PoolNode[0].Heaps[0..3]``: 0 NonPaged (executable), 1 NonPagedNx, 2 and 3 Paged;
  ``SpecialHeaps`` stay empty (no special pool). Issue 12 says ``SpecialHeaps[4]``: that holds
  from 19041; 18362's ISF has ``SpecialHeaps[3]`` (MemProcFS reads four entries regardless).
- each ``_SEGMENT_HEAP``: ``Signature`` 0xDDEEDDEE; ``SegContexts[0]`` (``UnitShift`` 12,
  ``FirstDescriptorIndex``, ``SegmentListHead`` linking the page segments through their first
  ``LIST_ENTRY``); ``SegContexts[1]`` (64 KiB units) holds no segment here.
- each ``_HEAP_PAGE_SEGMENT`` (1 MiB aligned, 256 4-KiB units): ``Signature`` = segment VA ^
  segment-context VA ^ ``HeapKey`` ^ 0xA2E64EADA2E64EAD (the constant is 0 from build 26100,
  MemProcFS); its ``DescArray`` is walked from ``FirstDescriptorIndex`` by ``UnitSize``: the
  first descriptor of a range has ``RangeFlags`` 0xB (LFH subsegment) or 0xF (VS subsegment)
  and ``TreeSignature`` 0xCCDDCCDD (PoolViewer checks it), the others ``RangeFlags`` 1 and
  their ``UnitOffset`` back to the first (PoolViewer); the unused tail is one range with
  ``RangeFlags`` 0.
- an LFH subsegment (``_HEAP_LFH_SUBSEGMENT``): ``BlockOffsets.EncodedData`` ^ (u32)``LfhKey`` ^
  ((u32)subsegment VA >> 12) gives ``BlockSize`` (low 16 bits) and ``FirstBlockOffset`` (high
  16); block i lies at subsegment + FirstBlockOffset + i * BlockSize, and a block that would
  cross a page is never handed out (MemProcFS and PoolViewer skip those slots); ``BlockBitmap``
  holds 2 bits per block, bit 0 busy, bit 1 "unused bytes" (Yason). Pool sizes are rounded to
  the bucket granularity, so the blocks fill their bucket exactly and read ``01``.
- a VS subsegment (``_HEAP_VS_SUBSEGMENT``): ``Signature`` (15 bits) = ``Size`` ^ 0x2BED, with
  ``FullCommit`` 0 so that MemProcFS's whole-word compare holds too; its chunks start after the
  header (rounded to the heap granularity, PoolViewer) and tile it; each chunk header's
  ``HeaderBits`` ^ chunk VA ^ ``HeapKey`` gives ``UnsafeSize`` and ``UnsafePrevSize`` (in units
  of the granularity) and ``Allocated``. On x64 the word is the first quadword and
  ``Allocated`` its byte at bits 48-55 (the issue's "bit 0" is that byte's); on x86 it is a
  32-bit word with ``UnsafeSize`` in bits 1-15 counting 8-byte units and ``Allocated`` bit 31
  (Volatility 2's 19041 x86 overlay, MemProcFS's 32-bit path), and the descriptors' ``RangeFlags``
  byte shares its top 3 bits with ``CommittedPageCount`` (readers mask 0x1F, MemProcFS does).
  An allocated chunk holds the pool header, then the
  data; no chunk of a small block crosses a page (the forge never lets one: where a request
  does not fit the rest of a page, that rest becomes a free chunk, or joins the previous chunk
  when it is too small for a free chunk, which MemProcFS accepts as one extra unit).

Every block starts with a ``_POOL_HEADER`` (``BlockSize`` = block size / granularity,
``PreviousSize`` 0, pool type 2 or 3, tag). A block is LFH-served once its size's bucket is
activated: the first allocations of each size (early boot) come from VS subsegments; the
17th activates the bucket (Yason's user-mode figure, assumed for the kernel), so a ``CBRe`` can
be a VS chunk: a reader must classify a block by the subsegment that holds it. The LFH serves
blocks up to 0x200 bytes ("Scoop the Windows 10 pool!"), larger small blocks are VS chunks.

Frees, as the heap does them:
- LFH: only the block's two bitmap bits go to 0; no byte of the block changes (up to 23H2).
- VS: the chunk first goes on the VS delay-free list (up to 32 chunks): its header still
  decodes as allocated, the list link overwrites the start of its pool header; when the list
  is full it is flushed, each chunk really freed: its header decodes free, it is merged with
  free neighbours, and the free-tree node (``_HEAP_VS_CHUNK_FREE_HEADER.Node``) of the chunk
  that heads the free range overwrites its pool header (the tag is gone); a chunk merged into
  the free chunk before it keeps its stale headers, tag included.

Big-pool allocations (more than 0xFE0 bytes, ``big_pool.py``) are served by the heap's backend:
a range of whole pages in a page segment whose first descriptor has ``RangeFlags`` 3 (allocated,
first of its range; what MemProcFS calls large pool and skips) and interior descriptors like
every other range; no pool header; ``nt!PoolBigPageTable`` records them. Freed, the range
becomes free (``RangeFlags`` 0, merged with free neighbours) and its pages are decommitted
(unmapped).

Not modelled: the 24H2 layouts (one bitmap bit per block, per-subsegment delay-free lists):
no 26100 ISF is at hand; ``FirstBlockOffset``'s shift differs there (``LFH_SHIFT_FROM_BUILD``).
LFH affinity slots, the non-activated buckets' usage counters (``Buckets[i]`` stays 0), the
chunk headers' ``EncodedSegmentPageOffset``, commit bitmaps beyond "all committed", large
allocations (above a page segment's reach, ``LargeAllocMetadata``), decommitted pages of live
ranges, the free-range tree of the backend and special pool are left out; the VS free tree is
written unencoded; allocations never reuse freed blocks.

The pieces, as the heap is built:

- ``heap.py``: :class:`SegmentHeapPool` (``nt!ExPoolState``, its keys, the four heaps, boot
  noise, the ground truth's description) and :class:`SegmentHeap` (one ``_SEGMENT_HEAP``: which
  allocator serves a block, its header and segment contexts);
- ``segments.py``: the backend, page segments and their range descriptors;
- ``lfh.py``: LFH buckets and subsegments, block bitmaps;
- ``vs.py``: VS subsegments and chunks, the delay-free list and the free tree.
"""

from .heap import SegmentHeapPool

__all__ = ["SegmentHeapPool"]
