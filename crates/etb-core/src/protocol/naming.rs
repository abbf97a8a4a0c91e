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
