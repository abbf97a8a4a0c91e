//! Checking that a file is an LMDB data file before handing it to LMDB, which trusts its input:
//! a corrupt or hostile file must give an error, never a crash or a hang. Opened with
//! `O_NOFOLLOW|O_NONBLOCK` so that a FIFO or a device cannot block us.
//!
//! LMDB 0.9's layout: two meta pages at offsets 0 and `psize`; each starts with a 16-byte page
//! header (flags at byte 10, `P_META` = 0x08), then `mm_magic` (0xBEEFC0DE) and `mm_version` (1),
//! and the page size is stored in the free database's `md_pad` (byte 40 of the page).

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

pub const MAGIC: u32 = 0xBEEF_C0DE;
pub const DATA_VERSION: u32 = 1;
const PAGE_HEADER: usize = 16;
const P_META: u16 = 0x08;

/// Checks one meta page's header bytes (at least 44 of them); returns its page size.
pub fn check_meta(page: &[u8], which: usize) -> Result<u32, String> {
    if page.len() < 44 {
        return Err(format!("meta page {which} is truncated"));
    }
    let u16_at = |o: usize| u16::from_ne_bytes([page[o], page[o + 1]]);
    let u32_at = |o: usize| u32::from_ne_bytes(page[o..o + 4].try_into().expect("4 bytes"));
    if u16_at(10) & P_META == 0 {
        return Err(format!("page {which} is not a meta page (flags {:#x})", u16_at(10)));
    }
    if u32_at(PAGE_HEADER) != MAGIC {
        return Err(format!("meta page {which} has magic {:#x}, not LMDB's {MAGIC:#x}", u32_at(PAGE_HEADER)));
    }
    if u32_at(PAGE_HEADER + 4) != DATA_VERSION {
        return Err(format!("meta page {which} has data version {}, not {DATA_VERSION}", u32_at(PAGE_HEADER + 4)));
    }
    let psize = u32_at(40);
    if !(512..=65536).contains(&psize) || !psize.is_power_of_two() {
        return Err(format!("meta page {which} gives page size {psize}"));
    }
    Ok(psize)
}

/// Checks `path` is a plausible LMDB data file: a regular file of at least two pages whose two
/// meta pages carry LMDB's magic and version and agree on a sane page size.
pub fn check_data_file(path: &Path, expected: Option<(u64, u64)>) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    {
        use std::os::unix::fs::MetadataExt;
        if expected.is_some_and(|(dev, ino)| (meta.dev(), meta.ino()) != (dev, ino)) {
            return Err(format!("{} was replaced while it was being checked", path.display()));
        }
    }
    let mut first = [0u8; 64];
    let n = file.read_at(&mut first, 0).map_err(|e| format!("{}: {e}", path.display()))?;
    let psize = check_meta(&first[..n], 0).map_err(|e| format!("{} is not an LMDB file: {e}", path.display()))?;
    if meta.len() < 2 * u64::from(psize) {
        return Err(format!(
            "{} is not an LMDB file: {} bytes, less than two {psize}-byte pages",
            path.display(),
            meta.len()
        ));
    }
    let mut second = [0u8; 64];
    let n = file.read_at(&mut second, u64::from(psize)).map_err(|e| format!("{}: {e}", path.display()))?;
    let psize2 = check_meta(&second[..n], 1).map_err(|e| format!("{} is not an LMDB file: {e}", path.display()))?;
    if psize2 != psize {
        return Err(format!("{} is not an LMDB file: its meta pages disagree on the page size", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lmdb::{EnvOptions, Environment};

    #[test]
    fn real_files_pass_and_damaged_ones_fail() {
        let dir = std::env::temp_dir().join(format!("etb-lmdb-unit-header-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.lmdb");
        let opts = EnvOptions { read_only: false, no_lock: false, no_sync: true, map_size: 1 << 20, max_dbs: 2 };
        drop(Environment::open(&path, &opts).unwrap());
        check_data_file(&path, None).unwrap();
        let good = std::fs::read(&path).unwrap();
        let damaged = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            check_data_file(&p, None).unwrap_err()
        };
        assert!(damaged("empty", b"").contains("truncated"));
        assert!(damaged("short", &good[..100]).contains("two"));
        let mut bad = good.clone();
        bad[16] ^= 0xff;
        assert!(damaged("magic", &bad).contains("magic"));
        let mut bad = good.clone();
        bad[20] = 9;
        assert!(damaged("version", &bad).contains("version"));
        let mut bad = good.clone();
        bad[40..44].copy_from_slice(&3000u32.to_ne_bytes());
        assert!(damaged("psize", &bad).contains("page size"));
        let random: Vec<u8> = (0..20000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        assert!(check_data_file(
            &{
                std::fs::write(dir.join("random"), &random).unwrap();
                dir.join("random")
            },
            None
        )
        .is_err());
        assert!(check_data_file(Path::new("/dev/zero"), None).is_err());
        assert!(check_data_file(&dir, None).is_err());
        let other = dir.join("other");
        std::fs::copy(&path, &other).unwrap();
        let id = std::fs::metadata(&path)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            })
            .unwrap();
        assert!(check_data_file(&other, Some(id)).unwrap_err().contains("replaced"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
