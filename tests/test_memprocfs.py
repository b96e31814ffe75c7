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

``windows.poolmap`` must agree with MemProcFS block for block where MemProcFS reports the block
(address, tag, allocated or free, pool), and report every block MemProcFS must report, with these
differences, each the two readers' different reading of the same metadata (docs/POOLMAP.md):
- MemProcFS gives the caller's address and size (after the 16-byte pool header); the pool map
  the pool header's address and the size with the header;
- a VS chunk on the heap's delay-free list is freed for the pool map (the kernel took it back)
  and allocated for MemProcFS when it lists it (it does not read that list);
- a freed big-pool entry is freed for the pool map, allocated for MemProcFS;
- on the classic pool MemProcFS's header scan calls every block allocated and can take data
  inside a block for a header: only the tag of the blocks it lists at a block start is compared.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from tests.conftest import real_isf_params, require_real_isf
from tests.forge.scenarios import forge_scenario
from tests.memprocfs_harness import IMAGE_MEMORY, MemProcFS, unavailable_reason
from tests.volatility_harness import volatility_plugin_rows

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


#: The pool map's pools as MemProcFS's VMM_MAP_POOL_TP, and its allocators as VMM_MAP_POOL_TPSS.
POOLMAP_POOLS = {"NonPagedPool": 1, "NonPagedPoolNx": 2, "PagedPool": 3}
POOLMAP_KINDS = {"LFH": LFH, "VS": VS, "large": BIG, "big page": BIG}


def shown_tag(text: Optional[str]) -> int:
    """The raw tag of one the pool map printed (bytes outside printable ASCII as ``\\xNN``)."""
    return int.from_bytes((text or "").encode("latin-1").decode("unicode_escape").encode("latin-1"), "little")


def poolmap_disagreements(truth: Dict[str, Any], pool: Dict[int, Listed], rows: List[Dict[str, Any]]) -> List[str]:
    """Where ``windows.poolmap``'s rows and MemProcFS's map disagree (see the module docstring)."""
    heap = truth["pool"]["allocator"] == "segment_heap"
    ours: Dict[int, Dict[str, Any]] = {}
    for row in rows:  # by the address MemProcFS gives: the caller's, after the pool header
        big = row["Allocator"] in ("large", "big page")
        ours[row["Address"] + (0 if big else POOL_HEADER_SIZE)] = row
    delayed = {block["body"] for block in truth["blocks"] if block["how"] == "vs_delay"}
    wrong = []
    if not heap:
        at_start = [va for va, listed in pool.items() if va in ours]
        wrong += [f"{va:#x}: MemProcFS's tag {pool[va].tag:#x}, the pool map's {ours[va]['Tag']!r}" for va in at_start
                  if shown_tag(ours[va]["Tag"]) != pool[va].tag and pool[va].kind != BIG]
        if len(at_start) < CLASSIC_LISTED_SHARE * len(pool):
            wrong.append(f"only {len(at_start)} of MemProcFS's {len(pool)} entries at a pool map block")
        return wrong
    for va, listed in pool.items():
        row = ours.get(va)
        if row is None:
            wrong.append(f"{va:#x}: MemProcFS lists {listed}, the pool map has no block there")
            continue
        allocated = row["State"] == "allocated"
        if listed.kind == BIG or va in delayed:
            allocated = True  # MemProcFS reads neither the delay-free list nor a big entry's free bit
        size = row["Size"] - (0 if listed.kind == BIG else POOL_HEADER_SIZE)
        got = Listed(shown_tag(row["Tag"]), allocated, POOLMAP_POOLS[row["Pool"]], POOLMAP_KINDS[row["Allocator"]], size)
        if not agrees(listed, got) and not (va in delayed and (got.kind, got.pool) == (listed.kind, listed.pool)):
            wrong.append(f"{va:#x}: MemProcFS lists {listed}, the pool map {got}")
    for va, row in ours.items():
        must = row["Allocator"] == "LFH" or (row["Allocator"] == "VS" and row["State"] == "allocated") \
            or row["Allocator"] in ("large", "big page")
        if must and va not in pool:
            wrong.append(f"{va:#x}: the pool map's {row}, not in MemProcFS's map")
    return wrong


def check_image(memprocfs: MemProcFS, image: Dict[str, Any], fmt: str, cache: Path) -> None:
    truth = image["truth"]
    heap = truth["pool"]["allocator"] == "segment_heap"
    read = memprocfs.read(image[fmt], image["isf"], heap)
    pool = pool_map(read)
    wrong = process_disagreements(truth, read)
    wrong += segment_heap_disagreements(truth, pool) if heap else classic_disagreements(truth, pool)
    rows, _warnings = volatility_plugin_rows(image[fmt], image["symbols"], cache, "windows.poolmap.PoolMap")
    wrong += [f"poolmap: {line}" for line in poolmap_disagreements(truth, pool, rows)]
    assert not wrong, f"MemProcFS {read['memprocfs']} on {truth['profile']} ({fmt}):\n" + "\n".join(wrong[:40])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scenario,profile", [("baseline", "win10"), ("rootkit", "win10"), ("baseline", "win7")])
def test_pool_map_builtin_profiles(memprocfs, forged_for_memprocfs, vol_cache, scenario, profile, fmt):
    check_image(memprocfs, forged_for_memprocfs(scenario, profile), fmt, vol_cache)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("isf", real_isf_params())
def test_pool_map_real_isf(memprocfs, forged_for_memprocfs, vol_cache, isf: Optional[str], fmt):
    check_image(memprocfs, forged_for_memprocfs("baseline", require_real_isf(isf)), fmt, vol_cache)


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


def test_poolmap_disagreements_are_seen():
    """The comparison with the pool map fails on a row that misreports a block MemProcFS lists,
    or on a block MemProcFS must list and does not; a delay-freed chunk is allowed either way."""
    truth = {"pool": {"allocator": "segment_heap"},
             "blocks": [{"body": 0x2010, "how": "vs_delay"}, {"body": 0x1010, "how": None}]}
    listed = {0x1010: Listed(tag_value("CBRe"), False, 2, LFH, 0x40), 0x2010: Listed(tag_value("Call"), True, 3, VS, 0x80)}

    def row(address, tag, state, pool, allocator, size):
        return {"Address": address, "Tag": tag, "State": state, "Pool": pool, "Allocator": allocator, "Size": size}

    right = [row(0x1000, "CBRe", "freed", "NonPagedPoolNx", "LFH", 0x50), row(0x2000, "Call", "freed", "PagedPool", "VS", 0x90)]
    assert poolmap_disagreements(truth, listed, right) == []
    allocated = [dict(right[0], State="allocated"), right[1]]
    other_tag = [dict(right[0], Tag="CBRx"), right[1]]
    unlisted = right + [row(0x3000, "Proc", "allocated", "NonPagedPoolNx", "VS", 0x100)]
    for wrong in (allocated, other_tag, unlisted, right[1:]):
        assert poolmap_disagreements(truth, listed, wrong)
