//! Where an agent's two LMDB files live (docs/protocol.md section 1).
//!
//! Default: `/tmp/agent_rank{N}_command.lmdb` and `/tmp/agent_rank{N}_state.lmdb`. A naming
//! function may map the rank to any pair of paths. Paths are bytes: non-UTF-8 is fine.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// Linux's `PATH_MAX`: a path must be shorter than this many bytes.
pub const PATH_MAX: usize = 4096;

/// An agent's command-queue and state LMDB paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPaths {
    pub command_queue: PathBuf,
    pub state: PathBuf,
}

impl AgentPaths {
    /// The default convention for agent rank `rank`.
    pub fn default_for_rank(rank: i64) -> AgentPaths {
        AgentPaths {
            command_queue: PathBuf::from(format!("/tmp/agent_rank{rank}_command.lmdb")),
            state: PathBuf::from(format!("/tmp/agent_rank{rank}_state.lmdb")),
        }
    }

    /// Checks what every naming function must give: two distinct, non-empty paths without NUL.
    pub fn validate(self) -> Result<AgentPaths> {
        for (what, path) in [("command queue path", &self.command_queue), ("state path", &self.state)] {
            let bytes = path.as_os_str().as_bytes();
            if bytes.is_empty() {
                return Err(naming_error(format!("the naming function returned an empty {what}")));
            }
            if bytes.contains(&0) {
                return Err(naming_error(format!("the naming function returned a {what} with a NUL byte: {path:?}")));
            }
            if bytes.len() >= PATH_MAX {
                return Err(naming_error(format!(
                    "the naming function returned a {what} of {} bytes; paths must be shorter than {PATH_MAX}",
                    bytes.len()
                )));
            }
        }
        if self.command_queue == self.state {
            return Err(naming_error(format!(
                "the naming function returned the same path for the command queue and the state: {:?}",
                self.state
            )));
        }
        Ok(self)
    }
}

fn naming_error(message: String) -> Error {
    Error::new(ErrorKind::Naming, message)
}

/// A job's naming as two path templates in which `{rank}` stands for the agent rank (the
/// default: `/tmp/agent_rank{rank}_state.lmdb` and `/tmp/agent_rank{rank}_command.lmdb`): what
/// the node tool and bootstrap's "agents found here" use to find every agent on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamingTemplate {
    pub state: String,
    pub command_queue: String,
}

/// The placeholder of a [`NamingTemplate`].
pub const RANK_PLACEHOLDER: &str = "{rank}";

impl Default for NamingTemplate {
    fn default() -> Self {
        NamingTemplate {
            state: format!("/tmp/agent_rank{RANK_PLACEHOLDER}_state.lmdb"),
            command_queue: format!("/tmp/agent_rank{RANK_PLACEHOLDER}_command.lmdb"),
        }
    }
}

impl NamingTemplate {
    /// Checks that both templates name the rank (`Naming` otherwise).
    pub fn new(state: &str, command_queue: &str) -> Result<NamingTemplate> {
        for (what, t) in [("state", state), ("command queue", command_queue)] {
            if !t.contains(RANK_PLACEHOLDER) {
                return Err(naming_error(format!("the {what} template {t:?} has no {RANK_PLACEHOLDER}")));
            }
        }
        Ok(NamingTemplate { state: state.to_string(), command_queue: command_queue.to_string() })
    }

    /// The two paths of agent `rank`.
    pub fn paths_for(&self, rank: i64) -> AgentPaths {
        let r = rank.to_string();
        AgentPaths {
            command_queue: PathBuf::from(self.command_queue.replace(RANK_PLACEHOLDER, &r)),
            state: PathBuf::from(self.state.replace(RANK_PLACEHOLDER, &r)),
        }
    }

    /// Every agent rank whose state file exists (as any kind of file) under the state template,
    /// sorted. Lists the one folder that holds the template's first `{rank}` (matching its
    /// entries by the text around `{rank}`), then checks the whole path of each candidate rank.
    pub fn scan(&self) -> Vec<i64> {
        let Some(at) = self.state.find(RANK_PLACEHOLDER) else { return Vec::new() };
        let folder_end = self.state[..at].rfind('/').map_or(0, |i| i + 1);
        let folder = if folder_end == 0 { "." } else { &self.state[..folder_end] };
        let component_end = self.state[at..].find('/').map_or(self.state.len(), |i| at + i);
        let (prefix, suffix) = (&self.state[folder_end..at], &self.state[at + RANK_PLACEHOLDER.len()..component_end]);
        let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
        let mut ranks: Vec<i64> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 18 {
                    return None;
                }
                let rank: i64 = digits.parse().ok()?;
                // The canonical spelling only ("007" is not rank 7's file), and the whole path.
                (rank.to_string() == digits && std::fs::symlink_metadata(self.paths_for(rank).state).is_ok())
                    .then_some(rank)
            })
            .collect();
        ranks.sort_unstable();
        ranks.dedup();
        ranks
    }
}

/// Ranks as short text: `4-7`, `0, 2, 5-6`.
pub fn rank_ranges(ranks: &[i64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        parts.push(if j > i { format!("{}-{}", ranks[i], ranks[j]) } else { ranks[i].to_string() });
        i = j + 1;
    }
    parts.join(", ")
}

/// The queue file's stem, Python's `PurePath.stem`: the file name without its last extension
/// (`agent_rank0_command.lmdb` -> `agent_rank0_command`; `.hidden` and `name.` stay whole).
pub fn file_stem(path: &Path) -> &[u8] {
    let name = path.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
    match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 && i < name.len() - 1 => &name[..i],
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        let p = AgentPaths::default_for_rank(7);
        assert_eq!(p.command_queue, Path::new("/tmp/agent_rank7_command.lmdb"));
        assert_eq!(p.state, Path::new("/tmp/agent_rank7_state.lmdb"));
        assert!(p.validate().is_ok());
    }

    #[test]
    fn validate_rejects_bad_pairs() {
        let mk = |c: &str, s: &str| AgentPaths { command_queue: c.into(), state: s.into() };
        assert!(mk("/x/c", "/x/s").validate().is_ok());
        assert_eq!(mk("", "/x/s").validate().unwrap_err().kind(), ErrorKind::Naming);
        assert_eq!(mk("/x/c", "").validate().unwrap_err().kind(), ErrorKind::Naming);
        assert!(mk("/x/s", "/x/s").validate().unwrap_err().message().contains("same path"));
        let long = "/".repeat(PATH_MAX);
        assert_eq!(mk(&long, "/x/s").validate().unwrap_err().kind(), ErrorKind::Naming);
    }

    #[test]
    fn templates_scan_and_ranges() {
        let dir = std::env::temp_dir().join(format!("etb-lmdb-unit-naming-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in
            ["j4_state.lmdb", "j7_state.lmdb", "j5_state.lmdb", "j05_state.lmdb", "jx_state.lmdb", "j6_state.lmdb-lock"]
        {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let d = dir.display();
        let t =
            NamingTemplate::new(&format!("{d}/j{{rank}}_state.lmdb"), &format!("{d}/j{{rank}}_command.lmdb")).unwrap();
        assert_eq!(t.scan(), vec![4, 5, 7]);
        assert_eq!(t.paths_for(5).command_queue, dir.join("j5_command.lmdb"));
        assert!(NamingTemplate::new("/x/state.lmdb", "/x/{rank}").is_err());
        assert_eq!(NamingTemplate::default().paths_for(3), AgentPaths::default_for_rank(3));
        assert_eq!(rank_ranges(&[4, 5, 6, 7]), "4-7");
        assert_eq!(rank_ranges(&[0, 2, 5, 6]), "0, 2, 5-6");
        assert_eq!(rank_ranges(&[]), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stems_follow_python_purepath() {
        for (path, stem) in [
            ("/tmp/agent_rank0_command.lmdb", "agent_rank0_command"),
            ("/tmp/a.b.lmdb", "a.b"),
            ("/tmp/noext", "noext"),
            ("/tmp/.hidden", ".hidden"),
            ("/tmp/name.", "name."),
            ("rel/q.x", "q"),
        ] {
            assert_eq!(file_stem(Path::new(path)), stem.as_bytes(), "{path}");
        }
    }
}
