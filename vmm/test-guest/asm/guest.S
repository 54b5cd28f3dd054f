/*
 * berth's minimal test guests: a few dozen bytes of 32-bit code entered through the PVH
 * protocol (a XEN_ELFNOTE_PHYS32_ENTRY note, as Linux uses), so the VMM's real boot path
 * (ELF loading, PVH note, start_info, 32-bit protected-mode entry) runs them exactly as it
 * runs a kernel. They need nothing but port I/O, which even kvm_pvm handles, so VMM tests
 * and the VMM benchmark run at full speed on any KVM.
 *
 * Variants, chosen at assembly time with -DVARIANT_*:
 *   HELLO  write one line to COM1, then reset through the i8042 (clean VMM exit)
 *   IDLE   write one line, then halt forever with interrupts off (for memory measurement)
 *   PANIC  write a Linux-style panic line, then reset (the VMM must report a panic)
 *   FLOOD  write to COM1 forever (the VMM must rate-limit the console log)
 *   TRIPLE write one line, then triple-fault (an empty IDT and a breakpoint): a crash with
 *          no reset requested, which the VMM must report as one
 */
    .code32
    .section .text, "ax"
    .globl pvh_entry
pvh_entry:
    cli
    /* PVH provides no stack; use the page below the kernel's load address. */
    mov $0x100000, %esp
#if defined(VARIANT_FLOOD)
flood:
    mov $message, %esi
    call print
    jmp flood
#else
    mov $message, %esi
    call print
#endif
#if defined(VARIANT_IDLE)
idle:
    hlt
    jmp idle
#elif defined(VARIANT_TRIPLE)
    /* #BP with no IDT raises #GP, then #DF, then the triple fault. */
    lidt empty_idt
    int3
    jmp .
#else
    /* Pulse the CPU reset line through the keyboard controller: Linux's reboot=k path. */
    mov $0xfe, %al
    out %al, $0x64
stuck:
    hlt
    jmp stuck
#endif

/* Writes the NUL-terminated string at %esi to COM1's transmit register. */
print:
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret

    .section .rodata, "a"
empty_idt:
    .word 0             /* limit */
    .long 0             /* base */
message:
#if defined(VARIANT_PANIC)
    .asciz "Kernel panic - not syncing: berth test guest panics on purpose\n"
#else
    .asciz "berth-test-guest: hello from the guest\n"
#endif

    /* The PVH entry point, read by the VMM's ELF loader (linux-loader). */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4             /* namesz: "Xen\0" */
    .long 4             /* descsz: a 32-bit physical address */
    .long 18            /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_entry
    .balign 4
