"""Our ISF files against the offsets of the project notes (callback-objects.md, Layouts)."""

import json
import os

import pytest

from volatility3_plugins.windows.callback_objects import isf
from volatility3_plugins.windows.kernelread import symbol_files

from tests.unit import memory

# (is_64bit, has_list) -> expected object fields/size, registration fields/size
OBJECT_X64 = {"Signature": 0x00, "Lock": 0x08, "RegisteredCallbacks": 0x10, "AllowMultipleCallbacks": 0x20}
OBJECT_X86 = {"Signature": 0x00, "Lock": 0x04, "RegisteredCallbacks": 0x08, "AllowMultipleCallbacks": 0x10}
REG_X64 = {"Link": 0x00, "CallbackObject": 0x10, "CallbackFunction": 0x18, "CallbackContext": 0x20, "Busy": 0x28, "UnregisterWaiting": 0x2C}
REG_X86 = {"Link": 0x00, "CallbackObject": 0x08, "CallbackFunction": 0x0C, "CallbackContext": 0x10, "Busy": 0x14, "UnregisterWaiting": 0x18}

CASES = [
    (True, True, dict(OBJECT_X64, ExpCallbackList=0x28), 0x38, REG_X64, 0x30),
    (True, False, OBJECT_X64, 0x28, REG_X64, 0x30),
    (False, True, dict(OBJECT_X86, ExpCallbackList=0x14), 0x1C, REG_X86, 0x1C),
    (False, False, OBJECT_X86, 0x14, REG_X86, 0x1C),
]

# Field widths that matter in real memory: padding is garbage, so read exactly these sizes.
WIDTHS = {"Signature": 4, "AllowMultipleCallbacks": 1, "Busy": 4, "UnregisterWaiting": 1}


@pytest.mark.parametrize("is_64bit,has_list,obj_fields,obj_size,reg_fields,reg_size", CASES)
def test_layout_matches_notes(is_64bit, has_list, obj_fields, obj_size, reg_fields, reg_size):
    context, _layer = memory.make_context(48 if is_64bit else 32)
    table = memory.load_our_table(context, is_64bit, has_list)
    obj = context.symbol_space.get_type(table + "!_CALLBACK_OBJECT")
    reg = context.symbol_space.get_type(table + "!_CALLBACK_REGISTRATION")
    assert obj.size == obj_size
    assert reg.size == reg_size
    assert set(obj.vol.members) == set(obj_fields)
    assert set(reg.vol.members) == set(reg_fields)
    for name, offset in obj_fields.items():
        assert obj.relative_child_offset(name) == offset, name
    for name, offset in reg_fields.items():
        assert reg.relative_child_offset(name) == offset, name
    pointer = 8 if is_64bit else 4
    for template in (obj, reg):
        for name, (_offset, member) in template.vol.members.items():
            if name in WIDTHS:
                assert member.size == WIDTHS[name], name
    assert reg.vol.members["CallbackFunction"][1].size == pointer
    assert reg.vol.members["CallbackObject"][1].size == pointer


def test_layout_filenames():
    assert isf.Layout(True, True).filename == "callbackobjects-x64.json"
    assert isf.Layout(True, False).filename == "callbackobjects-x64-win7.json"
    assert isf.Layout(False, True).filename == "callbackobjects-x86.json"
    assert isf.Layout(False, False).filename == "callbackobjects-x86-win7.json"


def test_isf_found_without_user_path():
    for is_64bit in (True, False):
        for has_list in (True, False):
            path = symbol_files.find_isf(isf.Layout(is_64bit, has_list).filename)
            assert path is not None and os.path.isfile(path)
            with open(path) as handle:
                assert json.load(handle)["metadata"]["format"].startswith("6.")
