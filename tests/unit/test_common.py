"""The standard-library facts the crash-dump layer and the kernel reader share: a crash dump's
page layout and the size it requires (every type), what a non-image file is, page tables walked
over bytes."""

import os
import struct

import pytest

from tests.forge.image import dump
from tests.forge.memory.physical import PhysicalMemory
from volatility3_plugins.common import crashdump_header, file_kind, page_tables, units

PAGE = units.PAGE_SIZE
FACTS = dump.MachineFacts(True, False, 0x1AD000, 19041, 0, 0, 0)
FACTS_X86 = dump.MachineFacts(False, True, 0x185000, 7601, 0, 0, 0)


def reader(data: bytes):
    return lambda offset, length: data[offset:offset + length]


def memory() -> PhysicalMemory:
    physical = PhysicalMemory()
    for number in (0x100, 0x101, 0x102, 0x180, 0x181):
        physical.write(number * PAGE, number.to_bytes(4, "little"))
    return physical


# The formats holding all of RAM (the kernel-page ones hold nothing of this page-table-less memory;
# their layouts are read by the same code, tested on forged images in tests/test_crash_dumps.py).
# The debugger engine's types exist for x64 dumps only.
@pytest.mark.parametrize("fmt, facts", [(fmt, facts) for fmt in ("dump", "bitmap", "complete") for facts in (FACTS, FACTS_X86)
                                        if facts.is_64bit or not dump.FORMATS[fmt].x64_only])
def test_the_layout_of_every_type_ends_where_the_file_does_and_a_cut_is_counted(tmp_path, fmt, facts):
    physical = memory()
    path = tmp_path / "memory.dmp"
    pages = dump.write_crash_dump(physical, path, facts, dump.FORMATS[fmt])
    data = path.read_bytes()
    header = crashdump_header.read_first_header(reader(data))
    assert (header.bits, header.dump_type, header.required_dump_space) == (
        64 if facts.is_64bit else 32, dump.FORMATS[fmt].dump_type, len(data))
    layout = crashdump_header.page_layout(reader(data), header, len(data))
    assert layout.end == len(data) and layout.pages == sum(count for _, count in pages)
    assert [(first, count) for first, count, _ in layout.runs] == [tuple(run) for run in pages]
    assert crashdump_header.truncation(reader(data), len(data)) is None
    cut = data[: len(data) - 3 * PAGE - 1]
    found = crashdump_header.truncation(reader(cut), len(cut))
    assert (found.missing, found.total) == (4, layout.pages)
    assert str(found).startswith(f"4 of {layout.pages:,} pages (16 KiB, ") and "lie past the end of the file" in str(found)


def test_headers_that_describe_no_layout_say_why():
    with pytest.raises(crashdump_header.DumpFormatError, match="cut short"):
        crashdump_header.read_first_header(reader(b"PAGEDU64" + bytes(100)))
    assert crashdump_header.read_first_header(reader(b"MZ" + bytes(0x3000))) is None
    header = crashdump_header.FirstHeader(64, 0x2000, 4, None, None)
    with pytest.raises(crashdump_header.DumpFormatError, match="DumpType 4"):
        crashdump_header.page_layout(reader(b""), header, 0x2000)


def test_sizes_are_said_as_a_responder_reads_them():
    assert units.size_text(12 * 1024) == "12 KiB" and units.size_text(int(1.8 * (1 << 20))) == "1.8 MiB"
    assert units.missing_pages_text(461, 4610) == "461 of 4,610 pages (1.8 MiB, 10%)"
    assert units.missing_pages_text(1, 4610).endswith("<1%)")
    assert units.missing_pages_cause("crash dump truncated", 461, 4610) == (
        "crash dump truncated (461 of 4,610 pages missing: 1.8 MiB, 10%)")


@pytest.mark.parametrize("content, words", [
    (b"", "an empty file (0 bytes)"),
    (b"\x00" * 100, "only 100 bytes: too small"),
    (b"line of text\n" * 1000, "a text file"),
    (b"PK\x03\x04" + bytes(8192), "a ZIP archive"),
    (b"\x1f\x8b\x08" + bytes(8192), "gzip-compressed"),
    (b"MDMP" + bytes(8192), "user-mode minidump (MDMP): not a full or kernel memory dump"),
    (os.urandom(1 << 20), "reads as random data"),
])
def test_what_a_non_image_is(content, words):
    said = file_kind.describe(reader(content), len(content))
    assert said is not None and words in said, said


def test_a_plausible_raw_image_or_a_crash_dump_is_not_named():
    physical = memory()
    raw = b"".join(physical.page_bytes(number) for number in range(0x200))
    assert file_kind.describe(reader(raw), len(raw)) is None
    assert file_kind.describe(reader(b"PAGEDU64" + bytes(0x3000)), 0x3008) is None


def test_page_tables_walked_over_bytes_count_what_lies_past_the_file():
    """A low stub pointing at a PML4 whose kernel half maps two pages, one of them past the end
    of the file, and one uncached device page past it too (not counted)."""
    image = bytearray(0x40000)
    pml4, pdpt, pd, pt = 0x10000, 0x11000, 0x12000, 0x13000
    struct.pack_into("<Q", image, 0x1000, page_tables.LOW_STUB_SIGNATURE)
    struct.pack_into("<Q", image, 0x1000 + page_tables.LOW_STUB_LM_TARGET, 0xFFFFF80000001000)
    struct.pack_into("<Q", image, 0x1000 + page_tables.LOW_STUB_CR3, pml4)
    struct.pack_into("<Q", image, pml4 + 0x1F0 * 8, pdpt | 3)
    struct.pack_into("<Q", image, pml4 + 0x1ED * 8, pml4 | 3)  # the self-map: skipped
    struct.pack_into("<Q", image, pdpt, pd | 3)
    struct.pack_into("<Q", image, pd, pt | 3)
    struct.pack_into("<Q", image, pt, 0x20000 | 3)
    struct.pack_into("<Q", image, pt + 8, 0x80000 | 3)  # past the end of the file
    struct.pack_into("<Q", image, pt + 16, 0x90000 | 0x13)  # uncached device memory
    read = reader(bytes(image))
    assert page_tables.low_stub_dtb(read) == pml4
    missing, total = page_tables.pages_past(read, pml4, page_tables.X64, len(image), page_tables.X64_KERNEL_HALF)
    assert (missing, total) == (1, 6), "PML4, PDPT, PD, PT and two write-back pages, one missing"
    # The cheap first look reads no last-level table: every table lies in the file here...
    assert not page_tables.tables_past(read, pml4, page_tables.X64, len(image), page_tables.X64_KERNEL_HALF)
    # ... and a page table past the end is seen without reading it.
    struct.pack_into("<Q", image, pd + 8, 0x70000 | 3)
    assert page_tables.tables_past(reader(bytes(image)), pml4, page_tables.X64, len(image), page_tables.X64_KERNEL_HALF)
    assert page_tables.low_stub_dtb(reader(bytes(0x200000))) is None
