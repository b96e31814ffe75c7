"""The ``busy`` scenarios: the benchmark's images of a machine whose memory is nearly all in use.

A real 4 GiB machine that has run a while has almost no idle RAM: most frames hold pool, file
cache and process pages, mapped somewhere in kernel space. This scenario plants the
``baseline`` inventory in such a machine:

- the non-paged (NonPagedNx) segment heap grown to 1/16 of RAM, between 128 and 256 MiB on a
  machine of 2 GiB or more (smaller on the scaled-down machines of the tests), full of
  allocated and freed noise blocks in LFH and VS subsegments, with all its metadata;
- every other free frame mapped into kernel space in bulk, filled with *procedural* content
  produced when the image is written (nothing stores 4 GiB): pool-like pages (chains of pool
  headers with common tags and random bodies) and cache-like pages (text and binary file data);
  no page is all zeros;
- a few hundred decoys among them: ``CBRe`` and ``Call`` strings at unaligned offsets of cache
  pages, and pool-like pages with a ``CBRe`` or ``Call`` block of random contents (not a
  registration, not an object: a scan must reject them).

``busy_server`` is the same machine with a server's non-paged heap: 1/16 of RAM with no upper
bound, at least 512 MiB from 8 GiB of RAM (``--memory-size 8G``: the issue's "busy 16 GiB
image with 545 MiB of heap" at half the RAM). The heap's noise is procedural
(``allocators/segment_heap/noise.py``) and so is the filler: the image is produced as it is
written, never held in memory whole.

It needs a 64-bit segment-heap build (the benchmark's ``win10``; 18362 and later) and a fixed
memory size (``--memory-size 4G``); the classic pool has no bulk noise writer and 32-bit kernel
space cannot map gigabytes. Neither is forged by the test suite at full size (a scaled-down
``busy_server`` is: 256 MiB of RAM, a 16 MiB heap).
"""

import random
from typing import Callable, Dict, List

from ..allocators.pool import NOISE_TAGS, PoolHeaders, PoolKind
from ..image.forge import ImageForge
from ..memory.machine import streams
from ..memory.physical import PAGE_SIZE
from ..profiles.layout import LayoutError
from .baseline import Story, baseline

MIN_HEAP = 128 << 20
MAX_HEAP = 256 << 20
HEAP_SHARE = 16  # the heap takes 1/16 of RAM, clamped to [MIN_HEAP, MAX_HEAP] from 2 GiB up
#: A server's heap: 1/16 of RAM, at least this much from SERVER_RAM up.
MIN_SERVER_HEAP = 512 << 20
SERVER_RAM = 8 << 30
DECOY_PAGES = 300  # on a 4 GiB machine; proportionally fewer on smaller ones
TEMPLATES = 64  # distinct page templates of each kind
STAMP = 8  # bytes of each filler page that carry its frame number, so pages differ

TEXT_WORDS = (b"the", b"windows", b"system32", b"config", b"service", b"driver", b"update", b"network",
              b"<html>", b"</div>", b"function", b"return", b"error", b"0x00000000", b"\r\n", b"user",
              b"registry", b"cache", b"file", b"data", b"{", b"}", b"=", b";", b"memory", b"power")


def heap_size(memory_size: int) -> int:
    share = memory_size // HEAP_SHARE
    return min(max(share, MIN_HEAP), MAX_HEAP) if memory_size >= 2 << 30 else share


def server_heap_size(memory_size: int) -> int:
    share = memory_size // HEAP_SHARE
    return max(share, MIN_SERVER_HEAP) if memory_size >= SERVER_RAM else share


class FillerPages:
    """Procedural page contents: a frame number gives its page, the same every time."""

    def __init__(self, headers: PoolHeaders, rng: random.Random, decoy_every: int) -> None:
        self._pool = [self._pool_page(headers, rng, decoy=False) for _ in range(TEMPLATES)]
        self._cache = [self._cache_page(rng, decoy=False) for _ in range(TEMPLATES)]
        self._pool_decoys = [self._pool_page(headers, rng, decoy=True) for _ in range(8)]
        self._cache_decoys = [self._cache_page(rng, decoy=True) for _ in range(8)]
        self._decoy_every = decoy_every

    @staticmethod
    def _pool_page(headers: PoolHeaders, rng: random.Random, decoy: bool) -> bytes:
        """A page of pool blocks; the first block's body starts with room for the stamp."""
        page = bytearray(rng.getrandbits(8 * PAGE_SIZE).to_bytes(PAGE_SIZE, "little"))
        offset, decoy_at = 0, rng.randrange(1, 6) if decoy else -1
        number = 0
        while offset < PAGE_SIZE:
            units = min(rng.randrange(2, 40), (PAGE_SIZE - offset) // headers.unit)
            tag = rng.choice(NOISE_TAGS)
            if number == decoy_at:
                tag = rng.choice((b"CBRe", b"Call"))
            pool_type = rng.choice((2, 2, 2, 0))  # some free blocks
            page[offset : offset + headers.size] = headers.pack(units, tag, pool_type)
            offset += units * headers.unit
            number += 1
        return bytes(page)

    @staticmethod
    def _cache_page(rng: random.Random, decoy: bool) -> bytes:
        if rng.randrange(2):
            text = bytearray()
            while len(text) < PAGE_SIZE:
                text += rng.choice(TEXT_WORDS) + b" "
            page = text[:PAGE_SIZE]
        else:
            page = bytearray(rng.getrandbits(8 * PAGE_SIZE).to_bytes(PAGE_SIZE, "little"))
        if decoy:
            for _ in range(rng.randrange(2, 6)):
                at = rng.randrange(STAMP + 1, PAGE_SIZE - 4) | 1  # never a pool-header position
                page[at : at + 4] = rng.choice((b"CBRe", b"Call"))
        return bytes(page)

    def is_decoy(self, frame: int) -> bool:
        return (frame * 0x9E37_79B1 & 0xFFFF_FFFF) % self._decoy_every == 0

    def __call__(self, frame: int) -> bytes:
        mixed = frame * 0x9E37_79B1 & 0xFFFF_FFFF
        pool_like = mixed & 0x100
        if self.is_decoy(frame):
            templates = self._pool_decoys if pool_like else self._cache_decoys
        else:
            templates = self._pool if pool_like else self._cache
        template = templates[(mixed >> 9) % len(templates)]
        # The stamp: in a pool page inside the first block's body, in a cache page at its start.
        at = 16 if pool_like else 0
        return template[:at] + frame.to_bytes(STAMP, "little") + template[at + STAMP :]


def busy(forge: ImageForge) -> Story:
    """A busy desktop: a non-paged heap of 1/16 of RAM, 128 to 256 MiB."""
    return _busy(forge, heap_size, "busy")


def busy_server(forge: ImageForge) -> Story:
    """A busy server: a non-paged heap of 1/16 of RAM, at least 512 MiB from 8 GiB up."""
    return _busy(forge, server_heap_size, "busy_server")


def _busy(forge: ImageForge, heap_bytes: Callable[[int], int], name: str) -> Story:
    layout = forge.layout
    if not layout.is_64bit or not layout.uses_segment_heap:
        raise LayoutError(f"{name} needs a 64-bit segment-heap build (18362 and later, e.g. win10), not {layout.name}")
    memory = forge.machine.physical.minimum_size
    if not memory:
        raise LayoutError(f"{name} needs a fixed memory size (--memory-size 4G)")
    story = baseline(forge)
    rng = streams(forge.seed, "busy")
    target = heap_bytes(memory)
    notes: Dict[str, object] = {"heap_target_bytes": target}
    notes["heap_noise"] = forge.pool.fill_noise(PoolKind.NONPAGED, target, rng)

    def fill_ram(f: ImageForge) -> None:
        """Last, once everything else has its frames: the rest of RAM, mapped in bulk."""
        machine = f.machine
        free = machine.physical.free_frame_count()
        filler = FillerPages(f.pool.headers, rng, max(1, free // max(1, DECOY_PAGES * memory // (4 << 30))))
        region = machine.plan.filler_region
        mapped = machine.space.map_filler(region, free, filler)
        frames: List[int] = [machine.space.translate(region + page * PAGE_SIZE) // PAGE_SIZE for page in range(mapped)]
        notes.update(filler_region=region & ((1 << 48) - 1), filler_pages=mapped,
                     decoy_pages=sum(1 for frame in frames if filler.is_decoy(frame)))

    forge.after_linking(fill_ram)
    forge.notes["busy"] = notes
    return story
