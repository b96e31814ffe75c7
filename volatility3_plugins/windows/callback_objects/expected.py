"""Loader and rules for ``expected_registrants.json`` (objects with a fixed set of registrants).

The data file is documented in its own ``_comment`` field. Rules are data so analysts can add
objects without touching code.
"""

import dataclasses
import json
import logging
import os
from typing import Any, Dict, FrozenSet, Iterable, Optional

vollog = logging.getLogger(__name__)

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "expected_registrants.json")


@dataclasses.dataclass(frozen=True)
class ExpectedRegistrants:
    """Maps lower-cased object names to the lower-cased module names allowed on them."""

    rules: Dict[str, FrozenSet[str]]

    def covers(self, object_name: Optional[str]) -> bool:
        return isinstance(object_name, str) and object_name.lower() in self.rules

    def is_unexpected(self, object_name: Optional[str], module_name: Optional[str]) -> bool:
        """True when the object has a fixed registrant set and the routine's module (None: the
        routine lies in no module) is not in it."""
        if not isinstance(object_name, str):
            return False
        allowed = self.rules.get(object_name.lower())
        if allowed is None:
            return False
        if not isinstance(module_name, str):
            return True
        return module_name.lower() not in allowed


def parse(document: Any) -> ExpectedRegistrants:
    """Builds the rules from the decoded JSON; malformed entries are skipped with a warning."""
    rules: Dict[str, FrozenSet[str]] = {}
    entries: Iterable[Any] = document.get("objects", []) if isinstance(document, dict) else []
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        modules = entry.get("allowed_modules") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(modules, list):
            vollog.warning(f"expected registrants: entry {index} malformed, skipped")
            continue
        allowed = frozenset(m.lower() for m in modules if isinstance(m, str))
        rules[name.lower()] = rules.get(name.lower(), frozenset()) | allowed
    return ExpectedRegistrants(rules=rules)


def load(path: Optional[str] = None) -> ExpectedRegistrants:
    """Loads the rules (the packaged file by default). An unreadable file disables the check
    with a warning rather than failing the whole plugin."""
    path = path or DEFAULT_PATH
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return parse(json.load(handle))
    except (OSError, ValueError) as excp:
        vollog.warning(f"expected registrants: cannot load {path}: {excp}")
        return ExpectedRegistrants(rules={})
