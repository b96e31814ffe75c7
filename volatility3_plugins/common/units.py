"""The page size, and how an amount of memory is said to a responder.

Standard library only (nothing at all, in fact): every package of ours may use it, the
crash-dump layer included (see ``common/__init__``'s note in the package table of docs/DESIGN.md).
"""

#: The page size of every Windows kernel this project reads (x86, PAE and x64 alike), and the
#: unit of every crash-dump format's page layout.
PAGE_SIZE = 0x1000


def size_text(size: int) -> str:
    """``size`` bytes as a responder reads it: ``12 KiB``, ``1.8 MiB``, ``2.0 GiB``."""
    if size < 1 << 20:
        return f"{size / 1024:.0f} KiB"
    if size < 1 << 30:
        return f"{size / (1 << 20):.1f} MiB"
    return f"{size / (1 << 30):.1f} GiB"


def _share(part: int, total: int) -> str:
    share = 100 * part / total if total else 100.0
    return "<1%" if 0 < share < 1 else f"{share:.0f}%"


def missing_pages_text(missing: int, total: int) -> str:
    """``461 of 4,610 pages (1.8 MiB, 10%)``: how much of something made of pages is missing."""
    return f"{missing:,} of {total:,} pages ({size_text(missing * PAGE_SIZE)}, {_share(missing, total)})"


def missing_pages_cause(what: str, missing: int, total: int) -> str:
    """``crash dump truncated (461 of 4,610 pages missing: 1.8 MiB, 10%)``: a cause of a degraded
    verdict, its numbers inside parentheses (a verdict line separates causes with commas)."""
    return f"{what} ({missing:,} of {total:,} pages missing: {size_text(missing * PAGE_SIZE)}, {_share(missing, total)})"
