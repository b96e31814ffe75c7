"""Symbol tables this project ships in ``symbols/windows/``: structures that no PDB (or not every
build's) describes. The user never passes ``-s`` for them: they are found relative to this file,
in a checkout or an installed package.
"""

import logging
import os
import pathlib
from typing import List, Optional

from volatility3.framework import interfaces
from volatility3.framework.symbols import intermed

vollog = logging.getLogger(__name__)


def symbol_directories() -> List[str]:
    """Candidate folders holding ``windows/*.json``, most specific first: in a checkout this file
    is ``volatility3_plugins/windows/kernelread/symbol_files.py`` and the tables live in
    ``<checkout>/symbols``; an installed package holds them in ``volatility3_plugins/symbols``."""
    here = pathlib.Path(__file__).resolve().parent
    candidates = [
        here.parent.parent.parent / "symbols",  # checkout: <repo>/symbols
        here.parent.parent / "symbols",  # package data inside volatility3_plugins/
    ]
    return [str(path) for path in candidates]


def find_isf(filename: str) -> Optional[str]:
    """The path of ``windows/<filename>`` in the first candidate folder holding it."""
    for folder in symbol_directories():
        path = os.path.join(folder, "windows", filename)
        if os.path.isfile(path):
            return path
    return None


def load_table(context: interfaces.context.ContextInterface, config_path: str, filename: str, basename: str) -> str:
    """Loads ``windows/<filename>`` into the context as a new table named after ``basename``;
    returns the table's name. Raises FileNotFoundError when no candidate folder holds it."""
    path = find_isf(filename)
    if path is None:
        raise FileNotFoundError(f"{filename} not found in any of: {', '.join(symbol_directories())}")
    table_name = context.symbol_space.free_table_name(basename)
    table = intermed.IntermediateSymbolTable(
        context=context,
        config_path=interfaces.configuration.path_join(config_path, table_name),
        name=table_name,
        isf_url=pathlib.Path(path).as_uri(),
    )
    context.symbol_space.append(table)
    vollog.debug(f"Loaded {path} as symbol table {table_name}")
    return table_name
