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
 *   COUNT  write one line, then count forever, one line per count in hex ("00000001"),
 *          the count held in a register: a snapshot restored into a new VM must go on
 *          from where it was, never from 1
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
#elif defined(VARIANT_COUNT)
    mov $message, %esi
    call print
    xor %ebx, %ebx
count:
    inc %ebx
    mov %ebx, %eax
    call print_hex
    /* A pause between lines: on kvm_pvm about 50 ms (a loop iteration there takes some
     * hundreds of nanoseconds), so a second holds tens of lines, not millions. */
    mov $0x10000, %ecx
3:  loop 3b
    jmp count
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

/* Writes %eax to COM1 as eight hex digits and a newline. */
print_hex:
    mov $8, %ecx
    mov $0x3f8, %dx
4:  rol $4, %eax
    push %eax
    and $0xf, %al
    cmp $10, %al
    jb 5f
    add $('a' - '0' - 10), %al
5:  add $'0', %al
    out %al, %dx
    pop %eax
    loop 4b
    mov $'\n', %al
    out %al, %dx
    ret

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
