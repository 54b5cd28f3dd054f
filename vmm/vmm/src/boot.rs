//! Loading a PVH kernel and its initramfs, and writing everything it reads at entry: the
//! command line, hvm_start_info with the memory map and module list, the MP table and the
//! boot GDT.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryRegion};

use crate::arch::layout::*;
use crate::arch::{mptable, regs};
use devices::GuestMemoryMmap;

/// Errors booting a kernel.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open the kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a bootable ELF kernel: {source}")]
    LoadKernel {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("{path} has no PVH entry point (an ELF vmlinux built with CONFIG_PVH=y is needed)")]
    NoPvhEntry { path: PathBuf },
    #[error("cannot open the initramfs {path}: {source}")]
    OpenInitrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the initramfs {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooBig { path: PathBuf, size: u64 },
    #[error("cannot read the initramfs {path} into guest memory: {source}")]
    ReadInitrd {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("the kernel command line is {len} bytes; the limit is {CMDLINE_MAX}")]
    CmdlineTooLong { len: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("cannot write {what} to guest memory: {detail}")]
    Write { what: &'static str, detail: String },
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
}

/// What the boot vCPU needs to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    /// Physical address of the PVH entry.
    pub pvh_entry: u64,
}

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const PAGE: u64 = 4096;

/// Loads `kernel` (and `initrd`) into `mem` and writes the boot data for `cpus` CPUs.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    cpus: u8,
) -> Result<EntryPoint, BootError> {
    let mut kernel_file = File::open(kernel).map_err(|source| BootError::OpenKernel {
        path: kernel.to_path_buf(),
        source,
    })?;
    let loaded = Elf::load(mem, None, &mut kernel_file, Some(GuestAddress(HIMEM_START))).map_err(
        |source| BootError::LoadKernel {
            path: kernel.to_path_buf(),
            source,
        },
    )?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(BootError::NoPvhEntry {
            path: kernel.to_path_buf(),
        });
    };

    let module = match initrd {
        Some(path) => Some(load_initrd(mem, path, loaded.kernel_end)?),
        None => None,
    };

    write_cmdline(mem, cmdline)?;
    write_start_info(mem, module)?;
    mptable::write(mem, cpus)?;
    regs::write_gdt(mem)?;
    Ok(EntryPoint {
        pvh_entry: entry.raw_value(),
    })
}

/// Puts the initramfs at the top of low RAM, page-aligned, above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<hvm_modlist_entry, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenInitrd {
        path: path.to_path_buf(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::OpenInitrd {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let low_end = low_ram_end(mem);
    let too_big = || BootError::InitrdTooBig {
        path: path.to_path_buf(),
        size,
    };
    let start = low_end.checked_sub(size).ok_or_else(too_big)? & !(PAGE - 1);
    if start < kernel_end.max(HIMEM_START) {
        return Err(too_big());
    }
    let len = usize::try_from(size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(GuestAddress(start), &mut file, len)
        .map_err(|source| BootError::ReadInitrd {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(hvm_modlist_entry {
        paddr: start,
        size,
        cmdline_paddr: 0,
        reserved: 0,
    })
}

/// End of the RAM region that starts at 0.
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .find(|r| r.start_addr() == GuestAddress(0))
        .map_or(0, |r| r.len())
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong { len: cmdline.len() });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|e| BootError::Write {
            what: "the command line",
            detail: e.to_string(),
        })
}

/// The memory map: RAM below the MP table, the MP table and legacy area reserved, RAM from
/// 1 MiB, and RAM above 4 GiB when there is any.
pub fn memory_map(mem: &GuestMemoryMmap) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr: u64, size: u64, type_| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let mut map = vec![
        entry(0, MPTABLE_ADDR, E820_RAM),
        entry(MPTABLE_ADDR, HIMEM_START - MPTABLE_ADDR, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(entry(start, end - start, E820_RAM));
        }
    }
    map
}

fn write_start_info(
    mem: &GuestMemoryMmap,
    module: Option<hvm_modlist_entry>,
) -> Result<(), BootError> {
    let map = memory_map(mem);
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: if module.is_some() {
            PVH_MODLIST_ADDR
        } else {
            0
        },
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: 0,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        reserved: 0,
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&map, GuestAddress(MEMMAP_ADDR));
    if let Some(module) = module {
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(|e| BootError::Write {
        what: "the PVH start info",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("berth-boot-{}-{name}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        path
    }

    #[test]
    fn loads_a_pvh_guest_with_an_initrd() {
        let mem = crate::memory::create(16).unwrap();
        let kernel = tmp("k", test_guest::HELLO);
        let initrd = tmp("i", &[0x5a; 10000]);
        let entry = load(&mem, &kernel, Some(&initrd), "console=ttyS0", 2).unwrap();
        assert_eq!(entry.pvh_entry, 0x10_0000);
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        assert_eq!(module.size, 10000);
        assert_eq!(module.paddr % PAGE, 0);
        assert!(module.paddr + module.size <= 16 << 20);
        let byte: u8 = mem.read_obj(GuestAddress(module.paddr + 9999)).unwrap();
        assert_eq!(byte, 0x5a);
        let mut cmd = [0u8; 14];
        mem.read_slice(&mut cmd, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
        std::fs::remove_file(kernel).unwrap();
        std::fs::remove_file(initrd).unwrap();
    }

    #[test]
    fn bad_kernels_are_clear_errors() {
        let mem = crate::memory::create(16).unwrap();
        let missing = Path::new("/nonexistent/vmlinux");
        assert!(matches!(
            load(&mem, missing, None, "", 1),
            Err(BootError::OpenKernel { .. })
        ));
        let garbage = tmp(
            "garbage",
            b"this is not an ELF file at all, not even close.......",
        );
        let err = load(&mem, &garbage, None, "", 1).unwrap_err();
        assert!(matches!(err, BootError::LoadKernel { .. }), "{err}");
        // A truncated ELF: the header survives, the segments do not.
        let truncated = tmp("trunc", &test_guest::HELLO[..80]);
        assert!(load(&mem, &truncated, None, "", 1).is_err());
        for p in [garbage, truncated] {
            std::fs::remove_file(p).unwrap();
        }
        let kernel = tmp("k2", test_guest::HELLO);
        let huge = "x".repeat(CMDLINE_MAX);
        assert!(matches!(
            load(&mem, &kernel, None, &huge, 1),
            Err(BootError::CmdlineTooLong { .. })
        ));
        let big_initrd = tmp("big", &vec![0u8; 17 << 20]);
        assert!(matches!(
            load(&mem, &kernel, Some(&big_initrd), "", 1),
            Err(BootError::InitrdTooBig { .. })
        ));
        std::fs::remove_file(kernel).unwrap();
        std::fs::remove_file(big_initrd).unwrap();
    }

    #[test]
    fn memory_map_reserves_the_mp_table_and_covers_high_ram() {
        let mem = crate::memory::create(4096).unwrap();
        let map = memory_map(&mem);
        assert_eq!(map[1].type_, E820_RESERVED);
        assert!(map[1].addr <= MPTABLE_ADDR);
        let ram: u64 = map
            .iter()
            .filter(|e| e.type_ == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4096 << 20) - (HIMEM_START - MPTABLE_ADDR));
        assert_eq!(map.last().unwrap().addr, MMIO_GAP_END);
    }
}
