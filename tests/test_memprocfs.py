"""A reader nobody here wrote: MemProcFS's pool map of forged images agrees with the ground truth.

MemProcFS (PyPI ``memprocfs``, Ulf Frisk) walks the kernel pool from the allocator's own
metadata (``vmm/vmmwinpool.c``, version 5.17.5 read). Each image is opened in a subprocess
(``tests/memprocfs_harness.py``), raw and crash dump, and its ``Vmm.maps.pool()`` compared with
the truth's ``blocks`` and ``big_pool`` under the rules of that walk:

Segment heap (18362 and later), ``VmmWinPool_AllPool1903_*``: every block of the truth is
listed or not exactly as the metadata says, nothing else is listed.
- LFH blocks: every slot whose pool header is intact is listed with its tag, allocated when its
  two bitmap bits read ``01`` (``VmmWinPool_AllPool1903_5_LFH_DoWork``), so a freed LFH block is
  listed, free, with its tag: the free changed no byte of it.
- VS chunks: listed only while their chunk header says allocated
  (``VmmWinPool_AllPool1903_5_VS_DoWork``); a chunk on the delay-free list still says so, but the
  list link has overwritten its pool header, which MemProcFS's size check then usually rejects
  (``VmmWinPool_AllPool_PushItem``): such a chunk may be listed (allocated) or not.
- The address is the caller's (after the 16-byte pool header), the pool type that of the heap
  the block lives in (``VmmWinPool_AllPool1903_1_HeapMgr``: heap 0 NonPagedPool, 1
  NonPagedPoolNx, 2 and 3 PagedPool), the size the block's less its header.

Classic pool (before 18362), ``VmmWinPool_AllPool7_*``: only 2 MiB windows around objects of the
object manager's map are scanned, by chaining pool headers, and every block found is called
allocated; random data in a body can look like a header, and a header the scan rejects loses
the chain for a while. So only address and tag are compared, of the blocks it lists; at least
half the truth's blocks must be among them (else it did not find the pool at all).

Big pool (every build, ``VmmWinPool_Initialize_BigPool_DoWork``): every entry of
``nt!PoolBigPageTable`` whose ``Va`` is a kernel address, freed ones included (their ``Va`` keeps
the address with bit 0 set), is listed at its page, allocated, with its tag, size and pool type.

MemProcFS must also see the forge's processes (it refuses an image with ten or fewer, and reads
the build number only through ``smss.exe``) and the build.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from tests.conftest import real_isf_params, require_real_isf
from tests.forge.scenarios import forge_scenario
from tests.memprocfs_harness import IMAGE_MEMORY, MemProcFS, unavailable_reason

FORMATS = ("raw", "dump")
ADDRESS_MASK = (1 << 48) - 1  # the truth's addresses are the low 48 bits, as Volatility prints them
POOL_HEADER_SIZE = 16  # x64 _POOL_HEADER: every image here is x64
HEAP_GRANULE = 16  # the x64 segment heap's unit
# VMM_MAP_POOL_TP (vmm/vmm.h) of each heap's pool (VmmWinPool_AllPool1903_1_HeapMgr).
HEAP_POOL_TYPES = {"nonpaged_execute": 1, "nonpaged": 2, "paged": 3}
# VMM_MAP_POOL_TPSS (vmm/vmm.h): how MemProcFS found the block.
BIG, VS, LFH = 2, 4, 5
# The classic scan resynchronises after headers it rejects; below this share it found no pool.
CLASSIC_LISTED_SHARE = 0.5


@dataclass(frozen=True)
class Listed:
    """One entry of MemProcFS's pool map, or what the truth says it must be."""

    tag: int
    allocated: bool
    pool: int
    kind: int
    size: int


def agrees(want: Listed, got: Optional[Listed]) -> bool:
    """``got`` is what ``want`` says; a VS chunk may hold one granule more than its block (a
    fragment too small to be a free chunk stays with it, tests/forge/allocators/segment_heap/vs.py), and
    MemProcFS gives the chunk's size."""
    if got is None or (got.tag, got.allocated, got.pool, got.kind) != (want.tag, want.allocated, want.pool, want.kind):
        return False
    return got.size == want.size or want.kind == VS and got.size == want.size + HEAP_GRANULE


def tag_value(tag: str) -> int:
    return int.from_bytes(tag.encode("latin-1"), "little")


def big_pool_type(pool_type: int) -> int:
    """VmmWinPool_PoolTypeConvert: the entry's _POOL_TYPE as VMM_MAP_POOL_TP."""
    return 3 if pool_type & 1 else 2 if pool_type & 0x200 else 1


def expected_big_pool(truth: Dict[str, Any]) -> Dict[int, Listed]:
    return {entry["va"]: Listed(tag_value(entry["tag"]), True, big_pool_type(entry["pool_type"]), BIG, entry["size"])
            for entry in truth["big_pool"]["allocations"]}


def expected_segment_heap(truth: Dict[str, Any]) -> Tuple[Dict[int, Listed], Dict[int, Listed]]:
    """(what must be listed, what may be listed) by caller address; the rest must not be."""
    required, optional = expected_big_pool(truth), {}
    for block in truth["blocks"]:
        kind = LFH if block["container"] == "lfh" else VS
        listed = Listed(tag_value(block["tag"]), block["state"] == "allocated", HEAP_POOL_TYPES[block["pool"]], kind,
                        block["size"] - POOL_HEADER_SIZE)
        if kind == LFH or block["state"] == "allocated":
            required[block["body"]] = listed
        elif block["how"] == "vs_delay":
            optional[block["body"]] = listed
    return required, optional


def segment_heap_disagreements(truth: Dict[str, Any], pool: Dict[int, Listed]) -> List[str]:
    required, optional = expected_segment_heap(truth)
    wrong = [f"{va:#x}: expected {want}, listed as {pool.get(va)}" for va, want in required.items()
             if not agrees(want, pool.get(va))]
    for va, got in pool.items():
        if va in required:
            continue
        maybe = optional.get(va)
        if maybe is None:
            wrong.append(f"{va:#x}: listed as {got}, not a block the truth lists")
        elif (got.allocated, got.kind, got.pool) != (True, maybe.kind, maybe.pool):
            wrong.append(f"{va:#x}: a delay-freed VS chunk, listed as {got}")
    return wrong


def classic_disagreements(truth: Dict[str, Any], pool: Dict[int, Listed]) -> List[str]:
    big = expected_big_pool(truth)
    wrong = [f"big pool {va:#x}: expected {want}, listed as {pool.get(va)}" for va, want in big.items()
             if not agrees(want, pool.get(va))]
    blocks = {block["body"]: block for block in truth["blocks"]}
    listed = [va for va in pool if va in blocks]
    wrong += [f"{va:#x}: tag {pool[va].tag:#x}, the truth's {blocks[va]['tag']!r}" for va in listed
              if pool[va].tag != tag_value(blocks[va]["tag"])]
    if len(listed) < CLASSIC_LISTED_SHARE * len(blocks):
        wrong.append(f"only {len(listed)} of the truth's {len(blocks)} blocks listed")
    return wrong


def pool_map(read: Dict[str, Any]) -> Dict[int, Listed]:
    return {entry["va"] & ADDRESS_MASK: Listed(entry["tag"], entry["alloc"], entry["pool"], entry["kind"], entry["size"])
            for entry in read["pool"]}


def process_disagreements(truth: Dict[str, Any], read: Dict[str, Any]) -> List[str]:
    expected = sorted((p["pid"], p["parent_pid"], p["name"]) for p in truth["processes"] if p["linked"])
    seen = sorted((p["pid"], p["ppid"], p["name"]) for p in read["processes"])
    wrong = [] if seen == expected else [f"processes {seen}, the truth's {expected}"]
    if read["build"] != truth["build"]:
        wrong.append(f"build {read['build']}, the truth's {truth['build']}")
    return wrong


@pytest.fixture(scope="session")
def memprocfs(tmp_path_factory) -> MemProcFS:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return MemProcFS(tmp_path_factory.mktemp("memprocfs"))


@pytest.fixture(scope="session")
def forged_for_memprocfs(tmp_path_factory) -> Callable[[str, str], Dict[str, Any]]:
    """(scenario, profile) -> paths, truth and ISF of an image with RAM enough for LeechCore."""
    cache: Dict[Tuple[str, str], Dict[str, Any]] = {}

    def build(scenario: str, profile: str) -> Dict[str, Any]:
        if (scenario, profile) not in cache:
            image = forge_scenario(scenario, profile, IMAGE_MEMORY)
            out = tmp_path_factory.mktemp(f"memprocfs-{scenario}-{Path(profile).name[:8]}")
            cache[scenario, profile] = dict(image.write(out, formats=FORMATS), truth=image.truth,
                                            isf=image.forge.layout.isf)
        return cache[scenario, profile]

    return build


def check_image(memprocfs: MemProcFS, image: Dict[str, Any], fmt: str) -> None:
    truth = image["truth"]
    heap = truth["pool"]["allocator"] == "segment_heap"
    read = memprocfs.read(image[fmt], image["isf"], heap)
    pool = pool_map(read)
    wrong = process_disagreements(truth, read)
    wrong += segment_heap_disagreements(truth, pool) if heap else classic_disagreements(truth, pool)
    assert not wrong, f"MemProcFS {read['memprocfs']} on {truth['profile']} ({fmt}):\n" + "\n".join(wrong[:40])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scenario,profile", [("baseline", "win10"), ("rootkit", "win10"), ("baseline", "win7")])
def test_pool_map_builtin_profiles(memprocfs, forged_for_memprocfs, scenario, profile, fmt):
    check_image(memprocfs, forged_for_memprocfs(scenario, profile), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("isf", real_isf_params())
def test_pool_map_real_isf(memprocfs, forged_for_memprocfs, isf: Optional[str], fmt):
    check_image(memprocfs, forged_for_memprocfs("baseline", require_real_isf(isf)), fmt)


def test_disagreements_are_seen():
    """The comparisons fail on a pool map that misreports one block each way."""
    truth = {"blocks": [
        {"body": 0x1010, "tag": "CBRe", "state": "freed", "how": "lfh", "container": "lfh", "pool": "nonpaged", "size": 0x50},
        {"body": 0x2010, "tag": "Call", "state": "allocated", "how": None, "container": "vs", "pool": "paged", "size": 0x90},
        {"body": 0x3010, "tag": "Call", "state": "freed", "how": "vs", "container": "vs", "pool": "paged", "size": 0x90},
    ], "big_pool": {"allocations": [{"va": 0x8000, "tag": "Big ", "pool_type": 0x200, "size": 0x2000}]}}
    right = {0x1010: Listed(tag_value("CBRe"), False, 2, LFH, 0x40), 0x2010: Listed(tag_value("Call"), True, 3, VS, 0x80),
             0x8000: Listed(tag_value("Big "), True, 2, BIG, 0x2000)}
    assert segment_heap_disagreements(truth, right) == []
    assert segment_heap_disagreements(truth, {**right, 0x2010: Listed(tag_value("Call"), True, 3, VS, 0x90)}) == []
    freed_as_allocated = {**right, 0x1010: Listed(tag_value("CBRe"), True, 2, LFH, 0x40)}
    freed_vs_listed = {**right, 0x3010: Listed(tag_value("Call"), True, 3, VS, 0x80)}
    big_missing = {va: listed for va, listed in right.items() if va != 0x8000}
    for wrong in (freed_as_allocated, freed_vs_listed, big_missing):
        assert segment_heap_disagreements(truth, wrong)
    assert classic_disagreements(truth, right) == []
    assert classic_disagreements(truth, {**right, 0x2010: Listed(tag_value("Cal1"), True, 3, 1, 0x80)})
    assert classic_disagreements(truth, {0x8000: right[0x8000]})  # no small block listed
