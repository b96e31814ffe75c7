"""Open one memory image with MemProcFS, offline, and print what it read as JSON.

    python memprocfs_reader.py IMAGE --output FILE [--package-dir DIR] [--verbose]
    python memprocfs_reader.py --probe [--package-dir DIR]

The MemProcFS tests run this script in a process of its own per image (``memprocfs_harness.py``):
MemProcFS keeps its state in its shared library, and reads its symbol database ``info.db`` from
the directory of the ``vmm.so`` the process loaded, so a process can only ever use one database.
``--package-dir DIR`` imports the ``memprocfs`` package from ``DIR/memprocfs`` (a copy beside an
extended ``info.db``) instead of the installed one.

Output (JSON, in FILE): ``{"memprocfs": version, "build": ..., "processes": [...], "pool": [...]}``, one pool
entry per block of ``Vmm.maps.pool()`` (``va`` is the caller's address, after the pool header;
``tag`` the raw ``dwTag``; ``pool`` MemProcFS's ``VMM_MAP_POOL_TP``, ``kind`` its
``VMM_MAP_POOL_TPSS``). ``--verbose`` prints MemProcFS's own log. Exit status 2: MemProcFS cannot be imported (the reason on standard
error); 3: it could not open the image or list its pool. Standard library only: this file is
run as a script, outside the test package.
"""

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

# Offline: no symbol server, no PDB subsystem (the Linux wheel has none), no plugins; wait for
# the initial scan and never refresh.
OFFLINE_ARGUMENTS = ["-disable-symbolserver", "-disable-symbols", "-disable-python", "-disable-yara",
                     "-waitinitialize", "-norefresh"]
DIAGNOSTIC_ARGUMENTS = ["-printf", "-v", "-vv", "-loglevel", "4,core:6,process:6,infodb:6,symbol:6,pool:6"]
EXIT_NOT_IMPORTABLE = 2
EXIT_NOT_OPENED = 3


def import_memprocfs(package_dir: str = "") -> Any:
    """The memprocfs module (from ``package_dir`` when given); ImportError with the real cause.

    memprocfs imports leechcorepyc inside a bare ``try``; when that fails (its ``leechcore.so``
    needs libusb-1.0), the error left is a misleading "No module named 'vmmpyc'"."""
    if package_dir:
        sys.path.insert(0, package_dir)
    try:
        importlib.import_module("leechcorepyc")
    except ImportError as excp:
        raise ImportError(f"leechcorepyc (MemProcFS's device layer) cannot be loaded: {excp}") from excp
    module = importlib.import_module("memprocfs")
    if package_dir and Path(package_dir).resolve() not in Path(module.__file__).resolve().parents:
        raise ImportError(f"memprocfs was imported from {module.__file__}, not from {package_dir}")
    return module


def read_image(memprocfs: Any, image: str, verbose: bool) -> Dict[str, Any]:
    arguments = ["-device", image] + OFFLINE_ARGUMENTS + (DIAGNOSTIC_ARGUMENTS if verbose else [])
    vmm = memprocfs.Vmm(arguments)
    try:
        processes = [{"pid": p.pid, "ppid": p.ppid, "name": p.name, "eprocess": p.eprocess} for p in vmm.process_list()]
        build = vmm.kernel.build
        pool: List[Dict[str, Any]] = [
            {"va": va, "tag": entry["dwTag"], "alloc": bool(entry["alloc"]), "pool": entry["tpPool"],
             "kind": entry["tpSS"], "size": entry["cb"]}
            for va, entry in sorted(vmm.maps.pool()["va"].items())
        ]
    finally:
        vmm.close()
    return {"build": build, "processes": processes, "pool": pool}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?")
    parser.add_argument("--output", help="where to write the JSON")
    parser.add_argument("--package-dir", default="")
    parser.add_argument("--probe", action="store_true", help="only check that MemProcFS can be imported")
    parser.add_argument("--verbose", action="store_true", help="MemProcFS's own log on standard output")
    args = parser.parse_args()
    try:
        memprocfs = import_memprocfs(args.package_dir)
    except ImportError as excp:
        print(excp, file=sys.stderr)
        return EXIT_NOT_IMPORTABLE
    if args.probe or not args.image:
        return 0
    if not args.output:
        parser.error("reading an image needs --output")
    try:
        result = read_image(memprocfs, args.image, args.verbose)
    except Exception as excp:  # vmmpyc raises TypeError or RuntimeError when a step fails
        print(f"MemProcFS could not read {args.image}: {type(excp).__name__}: {excp}", file=sys.stderr)
        return EXIT_NOT_OPENED
    try:
        from importlib.metadata import version

        result["memprocfs"] = version("memprocfs")
    except Exception:  # a copied package has no distribution metadata of its own
        result["memprocfs"] = None
    Path(args.output).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
