"""The forge's kernel-page selection on hand-made address spaces of the three paging modes."""

import pytest

from tests.forge.memory.kernel_pages import X64, X86, X86_PAE, clip_to, mapped_pages, runs_of
from tests.forge.memory.paging import AddressSpace, PaeAddressSpace, X86AddressSpace
from tests.forge.memory.physical import PAGE_SIZE, PhysicalMemory

SPACES = {
    "x64": (lambda physical: AddressSpace(physical, 0x1AD000, 0x1B2), X64, 0xFFFF_F803_0000_0000, 0x7FF6_0000_0000),
    "pae": (lambda physical: PaeAddressSpace(physical, 0x185000), X86_PAE, 0x8284_0000, 0x0040_0000),
    "x86": (lambda physical: X86AddressSpace(physical, 0x185000), X86, 0x8284_0000, 0x0040_0000),
}


@pytest.mark.parametrize("mode_name", SPACES)
def test_kernel_selection_holds_tables_and_kernel_frames_not_user_frames(mode_name):
    make_space, mode, kernel_address, user_address = SPACES[mode_name]
    physical = PhysicalMemory()
    space = make_space(physical)
    before = set(physical.page_numbers())  # the DTB (and PAE's directories): tables only
    kernel_frame = space.map_page(kernel_address) // PAGE_SIZE
    tables_for_kernel = set(physical.page_numbers()) - before - {kernel_frame}
    user_frame = space.map_page(user_address) // PAGE_SIZE
    tables = set(physical.page_numbers()) - {kernel_frame, user_frame}

    kernel = mapped_pages(physical, mode, space.dtb, include_user=False)
    assert kernel == tables | {kernel_frame}
    assert tables_for_kernel <= kernel and user_frame not in kernel
    assert mapped_pages(physical, mode, space.dtb, include_user=True) == tables | {kernel_frame, user_frame}


def test_large_pages_count_every_frame_they_map():
    physical = PhysicalMemory()
    space = AddressSpace(physical, 0x1AD000, 0x1B2)
    frame = space.map_page(0xFFFF_F803_0000_0000)
    directory = int.from_bytes(physical.read(space.dtb + 0x1F0 * 8, 8), "little") & X64.frame_mask
    directory = int.from_bytes(physical.read(directory + 0xC * 8, 8), "little") & X64.frame_mask
    entry_address = directory + 1 * 8  # the PDE after the one holding the page table: a 2 MiB page
    physical.write(entry_address, (0x4000_0000 | 0x83).to_bytes(8, "little"))
    pages = mapped_pages(physical, X64, space.dtb, include_user=False)
    assert set(range(0x40000, 0x40000 + 512)) <= pages and frame // PAGE_SIZE in pages


def test_runs_and_clipping():
    assert runs_of([5, 1, 2, 3, 7, 8]) == [(1, 3), (5, 1), (7, 2)]
    assert clip_to([0, 1, 5, 9, 10, 11], [(1, 2), (9, 2)]) == [1, 9, 10]
