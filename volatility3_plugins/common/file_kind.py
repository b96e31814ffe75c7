"""What a file is when no layer recognises it as a memory image: one line for the responder,
said before Volatility's own "Unable to validate the plugin requirements".

An empty file, a file smaller than a page, a text file, an archive or compressed file (to be
unpacked first), a user-mode minidump, an evidence container, or data that reads as random
(encrypted or compressed) is named as such. A file that might be a raw image (raw images have no
header: physical memory from address 0) gets nothing: it may simply lack a Windows kernel Volatility
can find, which Volatility's own message covers. Standard library only.
"""

import math
from typing import Optional, Tuple

from .crashdump_header import Read, is_crash_dump
from .units import PAGE_SIZE

#: (magic at offset 0, what the file is).
SIGNATURES: Tuple[Tuple[bytes, str], ...] = (
    (b"MDMP", "a user-mode minidump (MDMP): not a full or kernel memory dump"),
    (b"PK\x03\x04", "a ZIP archive (or an AFF4 container no layer opened): extract the memory image first"),
    (b"\x1f\x8b", "a gzip-compressed file: decompress it first"),
    (b"\xfd7zXZ\x00", "an xz-compressed file: decompress it first"),
    (b"BZh", "a bzip2-compressed file: decompress it first"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file: decompress it first"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive: extract the memory image first"),
    (b"Rar!\x1a\x07", "a RAR archive: extract the memory image first"),
    (b"EVF\x09\x0d\x0a\xff\x00", "an EWF (E01) evidence container: mount or convert it to a raw image first"),
    (b"hibr", "a Windows hibernation file (hiberfil.sys): convert it to a raw image first"),
    (b"HIBR", "a Windows hibernation file (hiberfil.sys): convert it to a raw image first"),
    (b"wake", "a Windows hibernation file (hiberfil.sys): convert it to a raw image first"),
    (b"WAKE", "a Windows hibernation file (hiberfil.sys): convert it to a raw image first"),
    (b"\x7fELF", "an ELF file in which no layer found memory (a program or library, not a core dump?)"),
)
#: Pages sampled across the file to tell random data from memory.
SAMPLES = 16
#: Random data: nearly no zero bytes, nearly 8 bits of entropy per byte. Memory, even of a busy
#: machine, is far from both (zero-filled structures, pages, padding).
RANDOM_ZERO_SHARE = 0.01
RANDOM_ENTROPY = 7.5


def describe(read: Read, size: int) -> Optional[str]:
    """What the file is, when it is certainly no memory image; None when it might be one."""
    if size <= 0:
        return "an empty file (0 bytes): not a memory image"
    head = read(0, min(size, PAGE_SIZE))
    if is_crash_dump(head):
        return None  # the crash-dump layer says what is wrong with it
    for magic, what in SIGNATURES:
        if head.startswith(magic):
            return what
    if size < PAGE_SIZE:
        return f"only {size} bytes: too small to be a memory image"
    if _is_text(head):
        return "a text file, not a memory image"
    step = max(PAGE_SIZE, size // SAMPLES // PAGE_SIZE * PAGE_SIZE)
    sample = b"".join(read(offset, PAGE_SIZE) for offset in range(0, size, step)[:SAMPLES])
    if _looks_random(sample):
        return "no known memory-image header, and it reads as random data (encrypted or compressed?): not a memory image"
    return None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(char.isprintable() or char in "\t\r\n" for char in text)
    return bool(text) and printable / len(text) > 0.95 and "\x00" not in text


def _looks_random(sample: bytes) -> bool:
    if not sample:
        return False
    counts = [0] * 256
    for byte in sample:
        counts[byte] += 1
    total = len(sample)
    entropy = -sum(count / total * math.log2(count / total) for count in counts if count)
    return counts[0] / total < RANDOM_ZERO_SHARE and entropy > RANDOM_ENTROPY
