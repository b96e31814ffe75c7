"""The crash-dump layer's pure parts: bitmap runs, segment settling, header facts."""

import datetime
import logging
import random

from volatility3_plugins.common import crashdump_header
from volatility3_plugins.layers import crashdump

PAGE = crashdump.PAGE_SIZE


def naive_runs(bitmap: bytes, bits: int):
    runs = []
    for bit in range(bits):
        if bitmap[bit // 8] >> (bit % 8) & 1:
            if runs and runs[-1][0] + runs[-1][1] == bit:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((bit, 1))
    return runs


def test_bitmap_runs_match_a_bit_by_bit_reading():
    generator = random.Random(15)
    for _ in range(200):
        bits = generator.randrange(1, 700)
        # Long runs of ones and zeros as well as noise: whole 0/~0 words and mixed ones.
        chunks = [generator.choice([b"\x00" * 9, b"\xff" * 9, bytes([generator.randrange(256)])]) for _ in range(12)]
        bitmap = b"".join(chunks)[: (bits + 7) // 8].ljust((bits + 7) // 8, b"\x00")
        assert crashdump_header.bitmap_runs(bitmap, bits) == naive_runs(bitmap, bits)


def test_bitmap_runs_ignore_bits_past_the_page_count():
    assert crashdump_header.bitmap_runs(b"\xff" * 16, 70) == [(0, 70)]
    assert crashdump_header.bitmap_runs(b"\xff" * 8 + b"\x01", 64) == [(0, 64)]
    assert crashdump_header.bitmap_runs(b"", 0) == []


def test_settle_segments_sorts_merges_clips_and_drops_overlaps(caplog, monkeypatch):
    monkeypatch.setattr(crashdump, "_said", crashdump.SaidOnce(crashdump.vollog))
    caplog.set_level(logging.INFO, logger=crashdump.vollog.name)
    layout = crashdump_header.PageLayout((
        (5, 2, 0x3000),  # continues the next one in memory and in the file
        (3, 2, 0x1000),
        (4, 1, 0x6000),  # lists page 4 a second time
        (6, 3, 0x8000),  # page 6 again, then 7 and 8 (past the file)
        (0x20, 4, 0x5000),
    ))
    settled = crashdump.settle_segments(layout, 0xA000, "unit-dump")
    assert settled == [(0x3000, 0x1000, 4 * PAGE, 4 * PAGE), (0x7000, 0x9000, PAGE, PAGE),
                       (0x20000, 0x5000, 4 * PAGE, 4 * PAGE)]
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["unit-dump: the crash dump is truncated: 1 of 12 pages (4 KiB, 8%) lie past the end of the file "
                        "(40 KiB of the 44 KiB its pages need)",
                        "unit-dump: the crash dump lists 2 pages more than once; the first copy is used"]
    crashdump.settle_segments(layout, 0xA000, "unit-dump")
    assert len(caplog.records) == 2, "the same facts about the same file are said once"


def test_filetime_and_dump_type_descriptions():
    moment = crashdump.filetime(0x01DB_3C2A_0000_0000)
    assert moment.replace(microsecond=0) == datetime.datetime(2024, 11, 21, 15, 28, 22, tzinfo=datetime.timezone.utc)
    assert crashdump.filetime(0) is None and crashdump.filetime(0x5045_4741_5045_4741) is None
    assert "triage dump" in crashdump.describe_dump_type(4)
    assert "no memory pages" in crashdump.unsupported_reason(3, 64)
    assert "32-bit" in crashdump.unsupported_reason(8, 32)
    assert "no Windows or debugger documentation" in crashdump.describe_dump_type(0x20)
