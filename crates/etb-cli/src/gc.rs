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
//! Without `--dead-agents` it never touches a queue's `cq_*` semaphores, an agent's files or a
//! worker lock file: those belong to agents, whose launch scripts clean them. With
//! `--dead-agents` ([`collect_dead_agents`]), for every agent under the naming that the shared
//! verdict (`connection::life`, the one bootstrap uses) finds gone: the data and `-lock` files of
//! its state and its command queue, and its `/cq_*_{stem}` semaphores only when no visible
//! process maps them and no live agent under the naming has the same stem (semaphore names come
//! from the file stem alone); only the calling user's files and semaphores, never a worker lock
//! file (`.{state}.worker`: removing lock files races).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use etb_core::connection::agent_life;
use etb_core::lmdb::lock_path;
use etb_core::protocol::command_queue::QueueNames;
use etb_core::protocol::naming::{file_stem, NamingTemplate};
use etb_core::protocol::state_db::StateDb;
use etb_core::sys::process::process_exists;
use etb_core::sys::trust::TrustPolicy;
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

/// What `--dead-agents` found: per gone agent, what it removed (or would remove).
pub struct DeadAgents {
    /// (rank, the files and semaphores removed).
    pub removed: Vec<(i64, Vec<String>)>,
    /// Semaphores kept: a process maps them, or a live agent has the same stem.
    pub kept_semaphores: Vec<String>,
    /// Files or semaphores of another user, left.
    pub skipped_foreign: usize,
}

/// Finds (and unless `dry_run`, removes) the files and queue semaphores of the agents under
/// `template` that are gone.
pub fn collect_dead_agents(template: &NamingTemplate, dry_run: bool) -> DeadAgents {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mut report = DeadAgents { removed: Vec::new(), kept_semaphores: Vec::new(), skipped_foreign: 0 };
    // The verdict needs the state opened (its lock read through the environment's own
    // descriptor); an untrusted or unreadable state is not judged, so never removed.
    let verdicts: Vec<(i64, bool)> = template
        .scan()
        .into_iter()
        .filter_map(|rank| {
            let path = template.paths_for(rank).state;
            let state = StateDb::open(&path, TrustPolicy::default()).ok()?;
            let gone = agent_life(&state, &path).gone(false);
            Some((rank, gone))
        })
        .collect();
    // Every environment opened above is closed now (the last lease of each dropped).
    let live_stems: HashSet<Vec<u8>> = verdicts
        .iter()
        .filter(|(_, gone)| !gone)
        .map(|(rank, _)| file_stem(&template.paths_for(*rank).command_queue).to_vec())
        .collect();
    let mapped = mapped_names();
    for (rank, _) in verdicts.iter().filter(|(_, gone)| *gone) {
        let paths = template.paths_for(*rank);
        let mut removed = Vec::new();
        for file in [&paths.state, &lock_path(&paths.state), &paths.command_queue, &lock_path(&paths.command_queue)] {
            let Ok(meta) = std::fs::symlink_metadata(file) else { continue };
            if !meta.file_type().is_file() || meta.uid() != euid {
                report.skipped_foreign += usize::from(meta.uid() != euid);
                continue;
            }
            if dry_run || std::fs::remove_file(file).is_ok() {
                removed.push(file.display().to_string());
            }
        }
        let stem = file_stem(&paths.command_queue).to_vec();
        let names = QueueNames::for_path(&paths.command_queue);
        for name in [&names.items, &names.space, &names.ready] {
            let shown = String::from_utf8_lossy(name).into_owned();
            let file = format!("sem.{}", shown.trim_start_matches('/'));
            let Ok(meta) = std::fs::symlink_metadata(format!("{SHM}/{file}")) else { continue };
            if meta.uid() != euid {
                report.skipped_foreign += 1;
                continue;
            }
            if mapped.contains(&file) || live_stems.contains(&stem) {
                report.kept_semaphores.push(shown);
                continue;
            }
            if dry_run || std::fs::remove_file(format!("{SHM}/{file}")).is_ok() {
                removed.push(shown);
            }
        }
        report.removed.push((*rank, removed));
    }
    report
}

pub fn run(dry_run: bool, json: bool, dead_agents: Option<&NamingTemplate>) {
    let r = collect(dry_run);
    let dead = dead_agents.map(|t| collect_dead_agents(t, dry_run));
    if json {
        let mut doc = json!({"removed": r.removed, "kept_live": r.kept_live, "skipped_foreign": r.skipped_foreign});
        if let Some(d) = &dead {
            doc["dead_agents"] = json!({
                "removed": d.removed.iter().map(|(rank, files)| json!({"rank": rank, "removed": files})).collect::<Vec<_>>(),
                "kept_semaphores": d.kept_semaphores,
                "skipped_foreign": d.skipped_foreign,
            });
        }
        crate::print_json(&doc);
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
    if let Some(d) = dead {
        for (rank, files) in &d.removed {
            for f in files {
                println!("{verb} {f} (agent rank {rank}, gone)");
            }
        }
        let mut summary = format!("{verb} the files of {} dead agent(s)", d.removed.len());
        if !d.kept_semaphores.is_empty() {
            summary.push_str(&format!(
                "; kept {} queue semaphore(s) a process maps or a live agent of the same stem uses",
                d.kept_semaphores.len()
            ));
        }
        if d.skipped_foreign > 0 {
            summary.push_str(&format!("; skipped {} of other users", d.skipped_foreign));
        }
        println!("{summary}");
    }
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
