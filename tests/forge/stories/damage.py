"""Imperfect memory: damage a forged image the way acquisition and transport damage real ones.

Real images are imperfect: an acquisition tool writes zeros for the pages it could not read, a
live capture is not atomic (a pointer changes while other pages are read: smear), a crash dump
is truncated in transit, an analyst points Volatility at the wrong symbol table. These helpers
plant exactly that into a built :class:`~tests.forge.forge.ImageForge` (after ``build()``, before
``write()``) or into written files, and say what they touched, so a test can tell "damaged, so
only informational flags" from "untouched, so exactly as before".

    forge = ImageForge.for_profile("win10"); story = baseline(forge); image = forge.build()
    damage = Damage(forge)
    damage.zero_page(story.objects["PowerState"].address)      # a page the acquisition lost
    damage.cut_link(story.objects["SetSystemTime"].address + damage.callback_list_offset)
    image.write(out)                                             # the damaged memory
    damage.touched_objects, damage.touched_registrations         # what the truth must excuse

What is left out: smear is modelled as a pointer that changed (a link cut or redirected), not
as pages captured at different times; paged-out memory as zeros (a raw image has no page file).
"""

import dataclasses
import json
import lzma
import random
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Set

from ..memory.physical import PAGE_MASK, PAGE_SIZE, masked
from ..profiles.layout import KernelLayout

if TYPE_CHECKING:
    from ..image.forge import ImageForge
    from ..image.output import ForgedImage
    from ..plants.callbacks import CallbackObject, Registration


@dataclasses.dataclass
class Damage:
    """Damage planted into one forged image, and the callback objects and registrations whose
    own memory it touched (masked addresses)."""

    forge: "ImageForge"
    pages: Set[int] = dataclasses.field(default_factory=set)
    links: Set[int] = dataclasses.field(default_factory=set)
    touched_objects: Set[int] = dataclasses.field(default_factory=set)
    touched_registrations: Set[int] = dataclasses.field(default_factory=set)
    log: List[str] = dataclasses.field(default_factory=list)

    @property
    def callback_list_offset(self) -> Optional[int]:
        return self.forge.callbacks.layout.callback_list

    # -- what lives where --------------------------------------------------------------

    def object_pages(self, callback: "CallbackObject") -> Set[int]:
        """Pages holding the object's own memory: its pool block (pool header, optional
        headers, object header, body), its name string and its directory entries."""
        kernel_object = callback.kernel_object
        end = callback.address + self.forge.callbacks.layout.object_size
        pages = _pages(kernel_object.block_header, end - kernel_object.block_header)
        for entry in kernel_object.entries:
            pages |= _pages(entry, self.forge.layout.size_of("_OBJECT_DIRECTORY_ENTRY"))
        if kernel_object.name_info is not None:
            buffer_field = self.forge.layout.field("_OBJECT_HEADER_NAME_INFO", "Name.Buffer")
            buffer = self.forge.machine.read_pointer(kernel_object.name_info + buffer_field.offset)
            if buffer:
                pages |= _pages(buffer, 2 * len(callback.name or "") + 2)
        return pages

    def registration_pages(self, registration: "Registration") -> Set[int]:
        return _pages(registration.block_header, registration.address + self.forge.callbacks.layout.registration_size - registration.block_header)

    # -- damage --------------------------------------------------------------------------

    def zero_page(self, virtual: int) -> None:
        """The page holding ``virtual`` reads as zeros, as an acquisition tool writes the pages
        it could not read; it stays mapped."""
        page = masked(virtual) & PAGE_MASK
        physical = self.forge.machine.space.translate(page)
        if physical is None:
            raise ValueError(f"{virtual:#x} is not mapped")
        self.forge.machine.physical.write(physical, bytes(PAGE_SIZE))
        self.pages.add(page)
        self.log.append(f"zeroed page {page:#x}")
        self._account()

    def cut_link(self, address: int, value: int = 0) -> None:
        """A list pointer at ``address`` that changed under the capture (smear): null, or
        ``value``."""
        self.forge.machine.write_pointer(address, value)
        self.links.add(masked(address))
        self.log.append(f"link at {masked(address):#x} set to {value:#x}")
        self._account()

    def _account(self) -> None:
        """Recompute which objects and registrations lie on damaged memory."""
        for callback in self.forge.callbacks.callback_objects:
            pages = self.object_pages(callback)
            body = masked(callback.address)
            if pages & self.pages or any(body <= link < body + self.forge.callbacks.layout.object_size for link in self.links):
                self.touched_objects.add(body)
            for registration in callback.registrations + self.forge.callbacks.loose_registrations:
                start = masked(registration.address)
                if self.registration_pages(registration) & self.pages or any(
                    start <= link < start + self.forge.callbacks.layout.registration_size for link in self.links
                ):
                    self.touched_registrations.add(start)

    # -- random damage -------------------------------------------------------------------

    def at_random(self, rng: random.Random, count: int) -> None:
        """``count`` random pieces of damage to the scenario's callback structures: a zeroed
        page under an object, a registration or a loader entry, or a cut list link."""
        callbacks = self.forge.callbacks
        registrations = [r for c in callbacks.callback_objects for r in c.registrations]
        modules = [m for m in self.forge.loader.modules if m.entry is not None and m is not self.forge.kernel]
        for _ in range(count):
            kind = rng.choice(["object", "registration", "module", "link"])
            if kind == "object":
                self.zero_page(rng.choice(callbacks.callback_objects).address)
            elif kind == "registration" and registrations:
                self.zero_page(rng.choice(registrations).address)
            elif kind == "module" and modules:
                self.zero_page(rng.choice(modules).entry)
            else:
                self.cut_link(*self._random_link(rng, registrations))

    def _random_link(self, rng: random.Random, registrations: List["Registration"]):
        pointer = self.forge.layout.pointer_size
        candidates = [r.address + rng.choice((0, pointer)) for r in registrations if r.linked]
        if self.callback_list_offset is not None:
            candidates += [
                c.address + self.callback_list_offset + rng.choice((0, pointer))
                for c in self.forge.callbacks.callback_objects if c.in_callback_list
            ]
        return rng.choice(candidates), rng.choice((0, self.forge.unmapped_address))


def _pages(start: int, length: int) -> Set[int]:
    first = masked(start) & PAGE_MASK
    last = (masked(start) + max(length, 1) - 1) & PAGE_MASK
    return set(range(first, last + PAGE_SIZE, PAGE_SIZE))


def truncate(path: Path, fraction: float = 0.5) -> int:
    """Cut a written image or dump to ``fraction`` of its size, as a copy interrupted in
    transit; returns the new size."""
    size = int(path.stat().st_size * fraction) & ~(PAGE_SIZE - 1)
    with open(path, "r+b") as handle:
        handle.truncate(size)
    return size


def write_mismatched_symbols(image: "ForgedImage", other: KernelLayout, directory: Path) -> Path:
    """The image's symbol-table file holding another build's tables under this image's PDB
    GUID: what a responder gets from a mislabelled or hand-edited ISF."""
    layout = image.forge.layout
    isf = json.loads(json.dumps(other.isf))
    isf["metadata"]["windows"]["pdb"].update({"GUID": layout.guid, "age": layout.age, "database": layout.pdb_name})
    target = directory / "windows" / layout.pdb_name / f"{layout.guid}-{layout.age}.json.xz"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(lzma.compress(json.dumps(isf).encode(), preset=1))
    return directory


def untouched_rows(truth_rows: Iterable[Dict], damage: Damage) -> List[Dict]:
    """Rows of an undamaged truth whose object and registration the damage did not touch."""
    return [
        row for row in truth_rows
        if row["Object"] not in damage.touched_objects and row["Registration"] not in damage.touched_registrations
    ]
