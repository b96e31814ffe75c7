"""Run MemProcFS on forged images from the tests: one subprocess per image, private ``info.db``s.

MemProcFS (PyPI ``memprocfs``, Ulf Frisk) is a memory-forensics reader nobody here wrote; the
tests ask it what the forge's images hold. Three things stand between it and a forged image:

- it needs Debian's ``libusb-1.0-0`` to load at all (its device layer links it);
- LeechCore, its file device, refuses files under 16 MiB (``leechcore/device_file.c``
  ``DeviceFile_Open``), so images for it are forged with :data:`IMAGE_MEMORY` of RAM;
- it reads the kernel's symbols from ``info.db`` only (``memprocfs_infodb.py``): for a kernel the
  stock file does not know, :meth:`MemProcFS.package_for` builds, once per kernel, a copy of the
  installed package whose ``info.db`` has that kernel's rows, taken from the image's ISF.

Each image is read by ``memprocfs_reader.py`` in a process of its own, so neither xdist workers
nor two ``info.db`` files can meet in one MemProcFS instance.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from tests.memprocfs_infodb import InfoDB

READER = Path(__file__).resolve().parent / "memprocfs_reader.py"
#: LeechCore's smallest file (DeviceFile_Open); the forged RAM is twice that.
LEECHCORE_MINIMUM_FILE = 16 << 20
IMAGE_MEMORY = 2 * LEECHCORE_MINIMUM_FILE
READ_TIMEOUT = 120  # seconds; a read takes about 0.2 s
INSTALL_HINT = ("install it with the test extra (pip install -e '.[test]', PyPI memprocfs) and Debian's libusb-1.0-0 "
                "(apt-get install libusb-1.0-0), which its device layer needs")

#: What MemProcFS takes from info.db to open an image and list its pool, checked after every
#: extension: the process list (vmm/vmmwin.c VmmWinProcess_OffsetLocatorSYMSERV), the big-pool
#: table (vmm/vmmwinpool.c VmmWinPool_Initialize_BigPool_DoWork) and, before 18362, the object
#: manager's map that places the classic pool's scan windows (vmm/vmmwin.c
#: VmmWin_ObjectTypeGet, vmm/vmmwinobj.c VmmWinObjMgr_Initialize).
MEMPROCFS_SYMBOLS = ("PsInitialSystemProcess", "PoolBigPageTable", "PoolBigPageTableSize", "ObTypeIndexTable",
                     "ObHeaderCookie", "ObpRootDirectoryObject")
MEMPROCFS_SIZES = ("_EPROCESS",)
MEMPROCFS_MEMBERS = {
    "_DISPATCHER_HEADER": ["SignalState"],
    "_KPROCESS": ["DirectoryTableBase", "UserDirectoryTableBase"],
    "_EPROCESS": ["ImageFileName", "UniqueProcessId", "InheritedFromUniqueProcessId", "ActiveProcessLinks", "Peb",
                  "SeAuditProcessCreationInfo", "VadRoot", "ObjectTable"],
}
#: What the segment-heap walk of 18362 and later adds (VmmWinPool_AllPool1903_Offsets).
MEMPROCFS_HEAP_SYMBOLS = ("ExPoolState",)
MEMPROCFS_HEAP_SIZES = ("_EX_HEAP_POOL_NODE", "_SEGMENT_HEAP", "_HEAP_SEG_CONTEXT", "_HEAP_PAGE_SEGMENT",
                        "_HEAP_PAGE_RANGE_DESCRIPTOR")
MEMPROCFS_HEAP_MEMBERS = {
    "_EX_POOL_HEAP_MANAGER_STATE": ["NumberOfPools", "PoolNode", "SpecialHeaps"],
    "_SEGMENT_HEAP": ["SegContexts"],
    "_HEAP_SEG_CONTEXT": ["UnitShift", "FirstDescriptorIndex", "SegmentListHead"],
    "_HEAP_PAGE_RANGE_DESCRIPTOR": ["UnitSize", "RangeFlags", "TreeSignature"],
    "_HEAP_LFH_SUBSEGMENT": ["BlockOffsets", "BlockBitmap"],
}


class MemProcFSError(Exception):
    """MemProcFS could not read an image: its message and log say why."""


def _installed_package() -> Optional[Path]:
    """The installed memprocfs package's directory, found without importing it (importing would
    load its vmm.so into this process)."""
    spec = importlib.util.find_spec("memprocfs")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def unavailable_reason() -> Optional[str]:
    """Why MemProcFS cannot run here, or None when it can (asked in a subprocess)."""
    if _installed_package() is None:
        return f"MemProcFS is not installed: {INSTALL_HINT}"
    probe = subprocess.run([sys.executable, str(READER), "--probe"], capture_output=True, text=True, timeout=READ_TIMEOUT)
    if probe.returncode != 0:
        return f"MemProcFS cannot be imported ({probe.stderr.strip() or probe.returncode}): {INSTALL_HINT}"
    return None


def lookups_checked(isf: Dict[str, Any], database: InfoDB, heap: bool) -> List[str]:
    """The lookups MemProcFS makes (those of the segment heap too when ``heap``) that
    ``database`` answers otherwise than ``isf``."""
    symbols, sizes, members = list(MEMPROCFS_SYMBOLS), list(MEMPROCFS_SIZES), dict(MEMPROCFS_MEMBERS)
    if heap:
        symbols += MEMPROCFS_HEAP_SYMBOLS
        sizes += MEMPROCFS_HEAP_SIZES
        members.update(MEMPROCFS_HEAP_MEMBERS)
    return database.disagreements(isf, symbols, sizes, members)


class MemProcFS:
    """Reads images with MemProcFS; private packages live under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.installed = _installed_package()
        if self.installed is None:
            raise MemProcFSError(f"MemProcFS is not installed: {INSTALL_HINT}")
        self._packages: Dict[str, Optional[Path]] = {}

    def _database(self, package: Optional[Path]) -> Path:
        return (package / "memprocfs" if package is not None else self.installed) / "info.db"

    def _stock_knows(self, guid: str, age: int) -> bool:
        stock = InfoDB(self._database(None), read_only=True)
        try:
            return stock.pdb_id(guid, age) is not None
        finally:
            stock.close()

    def package_for(self, isf: Dict[str, Any], heap: bool) -> Optional[Path]:
        """None when the stock info.db knows the kernel of ``isf``; else the directory of a copy
        of the package whose info.db has it (built once per kernel). Raises MemProcFSError when
        the database, keyed as MemProcFS keys it, does not give the ISF's values."""
        pdb = isf["metadata"]["windows"]["pdb"]
        guid, age = pdb["GUID"].upper(), int(pdb["age"])
        key = f"{guid}-{age}"
        if key not in self._packages:
            if self._stock_knows(guid, age):
                self._packages[key] = None
            else:
                self._packages[key] = self._private_package(key, isf)
        package = self._packages[key]
        database = InfoDB(self._database(package), read_only=True)
        try:
            wrong = lookups_checked(isf, database, heap)
        finally:
            database.close()
        if wrong:
            raise MemProcFSError(f"info.db does not give the ISF's values for {key}: {wrong}")
        return package

    def _private_package(self, key: str, isf: Dict[str, Any]) -> Path:
        directory = Path(tempfile.mkdtemp(prefix=f"memprocfs-{key}-", dir=self.workdir))
        package = directory / "memprocfs"
        shutil.copytree(self.installed, package, ignore=shutil.ignore_patterns("__pycache__"))
        database = InfoDB(self._database(directory))
        try:
            database.extend_with_isf(isf)
        finally:
            database.close()
        return directory

    def read(self, image: Path, isf: Dict[str, Any], heap: bool) -> Dict[str, Any]:
        """What MemProcFS reads of ``image`` (see ``memprocfs_reader.py`` for the shape)."""
        package = self.package_for(isf, heap)
        command = [sys.executable, str(READER), str(image)] + (["--package-dir", str(package)] if package else [])
        with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
            output = Path(scratch) / "read.json"
            run = subprocess.run(command + ["--output", str(output)], capture_output=True, text=True, timeout=READ_TIMEOUT)
            if run.returncode == 0:
                return json.loads(output.read_text())
        log = subprocess.run(command + ["--output", os.devnull, "--verbose"], capture_output=True, text=True,
                             timeout=READ_TIMEOUT)
        lines = [line for line in log.stdout.splitlines() if line.strip() and not line.startswith("[PLUGIN]")]
        raise MemProcFSError(f"{run.stderr.strip()}\nMemProcFS's log (end):\n" + "\n".join(lines[-80:]))
