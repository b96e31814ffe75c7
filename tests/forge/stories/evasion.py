"""The evasion scenario: routines that only look legitimate (issue 18).

The baseline, plus what the public techniques do to get a routine that lies in a signed module
(or to hide the module it lies in):

- an **argument gadget**: the address of a ``jmp rcx`` found inside an instruction of a
  legitimate driver's function (ndis.sys; x86: ``jmp [esp+4]``), registered with shellcode in
  executable pool as its context (gmh5225/Common-Registry-Jmp-RCX registers nvraid.sys's that way
  with CmRegisterCallback, whose routines are called as ``Routine(Context, Arg1, Arg2)`` too);
- a **gadget through the context**: ``jmp [rcx+10h]`` inside tcpip.sys (x86: ``mov eax, [esp+4];
  jmp [eax+10h]``), the context a pool table whose +0x10 points at shellcode;
- a **stub in int3 padding** between two functions of lltdio.sys, EBalloon/Common-Registry's
  ``push rax; mov rax, imm64; xchg [rsp], rax; ret`` (x86: ``push imm32; ret``), to shellcode in pool;
- a **stub in .text slack**, after afd.sys's ``VirtualSize``, ``mov rax, imm64; jmp rax`` (x86
  ``mov eax, imm32; jmp eax``), to code in pages of its own (no module, no pool);
- a **swapped pointer**: Defender's (WdFilter.sys) registration on
  ``SeImageVerificationDriverInfo`` pointed at the bare ``ret`` of an ntoskrnl function, to
  silence it (the hijack Blackbone #229 describes, aimed at an EDR);
- a **hidden driver** (shade.sys) unlinked from ``PsLoadedModuleList`` whose loader entry was
  zeroed and freed (``windows.modscan`` finds nothing) but whose driver object and
  inverted-function-table entry remain;
- x64 only: a **manually mapped image** (mapped.sys) known to nothing but the inverted function
  table, where a mapper inserts it so that its exceptions are dispatched.

Each plant is recorded (``ImageForge.expect_transfer``) so that the ground truth says where
control lands without reading memory back.
"""

from ..image.forge import ImageForge
from ..kernel.code import ARGUMENT_GADGET, GADGET_DISPLACEMENT, MOV_JMP, PUSH_RET, PUSH_XCHG, RET, THROUGH_GADGET, ExpectedTransfer
from ..kernel.modules import ENTRY_ERASED, ENTRY_NONE
from .baseline import Story, baseline

#: The kernel function whose bare ``ret`` the swapped registration points at: the first (by name)
#: that is not a leaf on every build.
SWAP_TARGET_CANDIDATES = ("KiSystemStartup", "ExpInitializeCallbacks", "ExCreateCallback")


def evasion(forge: ImageForge) -> Story:
    story = baseline(forge)
    objects, drivers = story.objects, story.drivers
    x64 = forge.layout.is_64bit

    # An argument gadget inside a legitimate function, shellcode as its context.
    shellcode = forge.allocate_code_outside_modules(tag=b"Ev01")
    gadget = drivers["ndis.sys"].code_address("ndisBindUnbindCallback", ARGUMENT_GADGET)
    forge.expect_transfer(gadget, ExpectedTransfer(argument=0))
    forge.register(objects["PowerState"], gadget, context=shellcode)

    # A gadget that jumps through its context: a pool table whose +0x10 holds the shellcode.
    target = forge.allocate_code_outside_modules(tag=b"Ev02")
    table = forge.allocate_pointer(target, GADGET_DISPLACEMENT, tag=b"Ev2t")
    gadget = drivers["tcpip.sys"].code_address("TcpTimerStarvationCallback", THROUGH_GADGET)
    forge.expect_transfer(gadget, ExpectedTransfer(argument=0, through=GADGET_DISPLACEMENT))
    forge.register(objects["SetSystemTime"], gadget, context=table)

    # A stub patched into the int3 padding after a function, to shellcode in pool.
    target = forge.allocate_code_outside_modules(tag=b"Ev03")
    cave = forge.write_stub(drivers["lltdio.sys"].padding_after("LltdMapperCallback"), target, PUSH_XCHG if x64 else PUSH_RET)
    forge.register(objects["ProcessorAdd"], cave, context=story.next_context())

    # A stub in the slack after .text's VirtualSize, to code in pages of its own.
    slack = forge.write_stub(drivers["afd.sys"].text_slack(), forge.allocate_unbacked_code(), MOV_JMP)
    forge.register(objects["IoExternalDmaUnblock"], slack, context=story.next_context())

    # An EDR's registration swapped to a bare ret inside an ntoskrnl function.
    victim = next(r for r in objects["SeImageVerificationDriverInfo"].registrations
                  if drivers["WdFilter.sys"].contains(r.routine))
    kernel_code = forge.kernel.code.functions
    name = next(n for n in SWAP_TARGET_CANDIDATES if n in kernel_code and not kernel_code[n].leaf)
    forge.swap_routine(victim, forge.kernel.code_address(name, RET))

    # A driver hidden from the list, its loader entry zeroed and freed; its driver object and
    # inverted-table entry remain.
    shade = forge.add_driver("shade.sys", functions={"ShadeTimeHook": 0x1500}, in_module_list=False, loader_entry=ENTRY_ERASED)
    forge.register(objects["SetSystemState"], shade.address_of("ShadeTimeHook"))

    # A manually mapped image registered in the inverted function table only (x64 has the table).
    if x64:
        mapped = forge.add_driver("mapped.sys", functions={"MappedHook": 0x1200}, in_module_list=False,
                                  loader_entry=ENTRY_NONE, driver_object=False)
        forge.register(objects["PowerState"], mapped.address_of("MappedHook"))
    return story
