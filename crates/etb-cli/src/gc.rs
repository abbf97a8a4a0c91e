//! `etb gc`: removes the completion semaphores that dead workers left in /dev/shm, and the
//! reference-counter files (`/etb_rc_{pid}_{n}`) of native workers that died with payloads.
//!
//! The reference worker client leaks one per command it ever sent (docs/protocol.md section 5).
//! A semaphore is removed only when all of these hold:
//! - its name has the completion form, the reference's and ours:
//!   `/command_{kind}_{context}_{pid}_{32 hex digits}`;
//! - the process of that pid no longer exists (a reused pid counts as alive: gc errs on keeping);
//! - no process maps it (`/proc/*/maps`: a worker in another pid namespace that shares /dev/shm
//!   keeps its own);
//! - it belongs to the calling user, or the caller is root (who may remove any user's; the
//!   human summary says how many were not root's own).
//!
//! It never touches a queue's `cq_*` semaphores, an agent's files or a worker lock file: those
//! belong to agents, whose launch scripts clean them.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use etb_core::sys::process::process_exists;
use serde_json::json;

const SHM: &str = "/dev/shm";

/// The pid in a completion semaphore's file name (`sem.command_..._{pid}_{32 hex}`), if it has
/// that form.
pub fn completion_pid(file_name: &str) -> Option<i32> {
    let name = file_name.strip_prefix("sem.command_")?;
    let (rest, hex) = name.rsplit_once('_')?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (_, pid) = rest.rsplit_once('_')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|&p: &i32| p > 0)
}

/// The pid in a reference-counter file's name (`etb_rc_{pid}_{n}`), if it has that form.
pub fn ref_counter_pid(file_name: &str) -> Option<i32> {
    let (pid, n) = file_name.strip_prefix("etb_rc_")?.split_once('_')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok().filter(|&p: &i32| p > 0)
}

/// Every /dev/shm file some process has mapped, by file name.
fn mapped_names() -> HashSet<String> {
    let mut names = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return names };
    for p in procs.flatten() {
        if !p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(p.path().join("maps")) else { continue };
        for line in maps.lines() {
            if let Some(at) = line.find("/dev/shm/") {
                let file = line[at + "/dev/shm/".len()..].trim_end_matches(" (deleted)");
                names.insert(file.to_string());
            }
        }
    }
    names
}

pub struct GcReport {
    pub removed: Vec<String>,
    pub kept_live: usize,
    pub skipped_foreign: usize,
    /// Root only: how many of the removed were other users'.
    pub removed_foreign: usize,
}

/// Finds (and unless `dry_run`, removes) the leaked completion semaphores.
pub fn collect(dry_run: bool) -> GcReport {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mut report = GcReport { removed: Vec::new(), kept_live: 0, skipped_foreign: 0, removed_foreign: 0 };
    let Ok(entries) = std::fs::read_dir(SHM) else { return report };
    let mut candidates: Vec<(String, i32, u32)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let pid = completion_pid(&name).or_else(|| ref_counter_pid(&name))?;
            let meta = std::fs::symlink_metadata(e.path()).ok()?;
            meta.file_type().is_file().then_some((name, pid, meta.uid()))
        })
        .collect();
    candidates.sort();
    let mapped = if candidates.is_empty() { HashSet::new() } else { mapped_names() };
    for (file, pid, uid) in candidates {
        if uid != euid && euid != 0 {
            report.skipped_foreign += 1;
            continue;
        }
        if process_exists(pid) || mapped.contains(&file) {
            report.kept_live += 1;
            continue;
        }
        if !dry_run && std::fs::remove_file(format!("{SHM}/{file}")).is_err() {
            continue;
        }
        if uid != euid {
            report.removed_foreign += 1;
        }
        report.removed.push(format!("/{}", file.strip_prefix("sem.").unwrap_or(&file)));
    }
    report
}

pub fn run(dry_run: bool, json: bool) {
    let r = collect(dry_run);
    if json {
        crate::print_json(
            &json!({"removed": r.removed, "kept_live": r.kept_live, "skipped_foreign": r.skipped_foreign}),
        );
        return;
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for name in &r.removed {
        println!("{verb} {name}");
    }
    let mut summary = format!(
        "{verb} {} completion semaphore(s) of dead workers; kept {} of live or mapping processes",
        r.removed.len(),
        r.kept_live
    );
    if r.skipped_foreign > 0 {
        summary.push_str(&format!("; skipped {} of other users (root may remove them)", r.skipped_foreign));
    }
    if r.removed_foreign > 0 {
        summary.push_str(&format!("; {} of the {verb} were other users'", r.removed_foreign));
    }
    println!("{summary}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_names() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(completion_pid(&format!("sem.command_transfer_batch_b1_send_4242_{hex}")), Some(4242));
        assert_eq!(completion_pid(&format!("sem.command_register_w_1_{hex}")), Some(1));
        assert_eq!(completion_pid(&format!("sem.cq_agent_rank0_command_{hex}")), None);
        assert_eq!(completion_pid("sem.command_transfer_b_12_xyz"), None);
        assert_eq!(completion_pid(&format!("sem.command_x_{hex}")), None);
        assert_eq!(completion_pid(&format!("sem.command_x_0_{hex}")), None);
        assert_eq!(completion_pid(&format!("command_x_12_{hex}")), None);
        assert_eq!(ref_counter_pid("etb_rc_4242_3"), Some(4242));
        assert_eq!(ref_counter_pid("etb_rc_4242"), None);
        assert_eq!(ref_counter_pid("torch_4242_3"), None);
    }
}
