"""Windows 7 SP1 x86 without PAE (ntkrnlmp.pdb): the win7_7601_x86 tables, 2-level paging.

The non-PAE multiprocessor kernel (ntkrnlmp.exe) and the PAE one (ntkrpamp.exe) are built from
the same sources; the structures the forge writes do not depend on the page-table format, so
this profile reuses the win7_7601_x86 facts (Volatility 2's win7_sp1_x86_vtypes.py serves both
kernels) and differs only in the PDB name and the paging mode. Its symbol RVAs are as plausible,
and as unknowable here, as those of win7_7601_x86.
"""

from .win7_7601_x86 import BASE_TYPES, BUILD, ENUMS, NT_VERSION, POINTER_SIZE, SOURCE, SYMBOLS, USER_TYPES  # noqa: F401

PDB_NAME = "ntkrnlmp.pdb"
PAE = False
