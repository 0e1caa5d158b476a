"""A hand-made multiboot guest for QEMU: long mode, then CPL3 code that writes one byte per 4 KiB page.

Contract: :func:`build_image` returns the bytes of a multiboot (v1, "a.out kludge" load addresses)
kernel for ``qemu-system-x86_64 -kernel``. Loaded at 1 MiB, it turns on PAE paging with prebuilt
tables (1 GiB identity map of 2 MiB user pages: PML4 at 0x101000, PDPT, PD), enters 64-bit mode,
``iretq``s to CPL3 with IOPL=3 and interrupts off, and then loops forever over ``TOUCH_PAGES`` pages
from ``TOUCH_BASE``, writing one byte in each. Under a shadow-paging KVM each first write is one
shadow-MMU fault: one software walk of 3 guest levels (PML4, PDPT, PD). Nothing else is needed at
run time; the bytes are assembled here by hand (encodings in the comments).
"""

from __future__ import annotations

import struct

__all__ = ["build_image", "TOUCH_BASE", "TOUCH_PAGES", "LOAD_ADDR"]

LOAD_ADDR = 0x100000
ENTRY32 = LOAD_ADDR + 0x100
ENTRY64 = LOAD_ADDR + 0x200
USER_CODE = LOAD_ADDR + 0x300
GDT = LOAD_ADDR + 0x40
GDT_PTR = LOAD_ADDR + 0x68
PML4 = LOAD_ADDR + 0x1000
TOUCH_BASE = 0x1000000   # 16 MiB
TOUCH_PAGES = 16384      # 64 MiB
KERNEL_STACK = 0x180000
USER_STACK = 0x1F0000


def _code32() -> bytes:
    code = b"\xfa"                                           # cli
    code += b"\x0f\x20\xe0" + b"\x83\xc8\x20" + b"\x0f\x22\xe0"  # mov eax,cr4; or eax,0x20 (PAE); mov cr4,eax
    code += b"\xb8" + struct.pack("<I", PML4) + b"\x0f\x22\xd8"  # mov eax,PML4; mov cr3,eax
    code += b"\xb9" + struct.pack("<I", 0xC0000080)          # mov ecx,IA32_EFER
    code += b"\x0f\x32" + b"\x0d\x00\x01\x00\x00" + b"\x0f\x30"  # rdmsr; or eax,LME; wrmsr
    code += b"\x0f\x20\xc0" + b"\x0d\x01\x00\x00\x80" + b"\x0f\x22\xc0"  # mov eax,cr0; or eax,PG|PE; mov cr0,eax
    code += b"\x0f\x01\x15" + struct.pack("<I", GDT_PTR)     # lgdt [GDT_PTR]
    code += b"\xea" + struct.pack("<IH", ENTRY64, 0x08)      # jmp 0x08:ENTRY64
    return code


def _code64() -> bytes:
    code = b"\x66\xb8\x10\x00" + b"\x8e\xd8\x8e\xc0\x8e\xd0"  # mov ax,0x10; mov ds,ax; mov es,ax; mov ss,ax
    code += b"\xbc" + struct.pack("<I", KERNEL_STACK)         # mov esp,KERNEL_STACK (zero-extends)
    code += b"\x6a\x23"                                       # push 0x23 (ss: user data, RPL 3)
    code += b"\x68" + struct.pack("<I", USER_STACK)           # push USER_STACK
    code += b"\x68" + struct.pack("<I", 0x3002)               # push rflags: IOPL=3, IF=0
    code += b"\x6a\x1b"                                       # push 0x1b (cs: user code, RPL 3)
    code += b"\x68" + struct.pack("<I", USER_CODE)            # push USER_CODE
    code += b"\x48\xcf"                                       # iretq
    return code


def _user_code() -> bytes:
    code = b"\x48\xbf" + struct.pack("<Q", TOUCH_BASE)        # start: mov rdi,TOUCH_BASE
    code += b"\x48\xb9" + struct.pack("<Q", TOUCH_PAGES)      # mov rcx,TOUCH_PAGES
    code += b"\xc6\x07\x01"                                   # loop: mov byte [rdi],1
    code += b"\x48\x81\xc7\x00\x10\x00\x00"                   # add rdi,4096
    code += b"\x48\xff\xc9"                                   # dec rcx
    code += b"\x75\xf1"                                       # jnz loop
    code += b"\xf3\x90"                                       # pause
    code += b"\xeb" + struct.pack("<b", -(len(code) + 2))     # jmp start
    return code


def build_image() -> bytes:
    """The multiboot kernel image (see the module docstring)."""
    image = bytearray(0x4000)
    magic, flags = 0x1BADB002, 0x00010000
    struct.pack_into("<8I", image, 0, magic, flags, (-(magic + flags)) & 0xFFFFFFFF,
                     LOAD_ADDR, LOAD_ADDR, LOAD_ADDR + len(image), 0, ENTRY32)
    gdt = [0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, 0x00AFFA000000FFFF, 0x00CFF2000000FFFF]
    struct.pack_into(f"<{len(gdt)}Q", image, GDT - LOAD_ADDR, *gdt)
    struct.pack_into("<HI", image, GDT_PTR - LOAD_ADDR, 8 * len(gdt) - 1, GDT)
    for address, code in ((ENTRY32, _code32()), (ENTRY64, _code64()), (USER_CODE, _user_code())):
        image[address - LOAD_ADDR:address - LOAD_ADDR + len(code)] = code
    struct.pack_into("<Q", image, 0x1000, (PML4 + 0x1000) | 0x7)        # PML4[0] -> PDPT (P|RW|US)
    struct.pack_into("<Q", image, 0x2000, (PML4 + 0x2000) | 0x7)        # PDPT[0] -> PD
    for i in range(512):
        struct.pack_into("<Q", image, 0x3000 + 8 * i, (i << 21) | 0x87)  # 2 MiB pages, P|RW|US|PS
    return bytes(image)
