//! The messages bootstrap gives when the agent is not ready by its deadline, built in one place
//! for bootstrap, reconnect and `etb doctor` (which shows the very message a worker would get).

use std::path::Path;

use super::{agent_life_at, Origin};
use crate::error::{Error, ErrorKind};
use crate::protocol::command_queue::AttachError;
use crate::protocol::naming::rank_ranges;
use crate::protocol::state_db::{StateError, HEARTBEAT_FRESH_SECS};

/// The error bootstrap reports when the state LMDB was not ready by its deadline (`last` says why).
pub fn state_error(path: &Path, last: StateError, secs: f64, origin: &Origin) -> Error {
    let p = path.display();
    let hint = format!("Check AGENT_RANK, or RANK and AGENT_RANK_OFFSET ({origin}).");
    match last {
        StateError::Missing(std::io::ErrorKind::PermissionDenied) => Error::new(
            ErrorKind::Lmdb,
            format!("Agent state LMDB at {p} cannot be reached: permission denied on the path. {hint}"),
        ),
        StateError::Missing(_) => Error::new(
            ErrorKind::AgentNotFound,
            format!(
                "Agent LMDB not found at {p} after {secs:.3}s. Please ensure the agent process is running. {hint} {}",
                agents_elsewhere(origin)
            ),
        ),
        StateError::Lmdb(e) => Error::new(
            ErrorKind::Lmdb,
            format!("Agent state LMDB at {p} could not be read after {secs:.3}s: {}. {hint}", e.text()),
        ),
        StateError::NotLmdb(why) => Error::new(
            ErrorKind::Lmdb,
            format!("Agent state LMDB at {p} is still not a usable LMDB file after {secs:.3}s: {why}. {hint}"),
        ),
        StateError::Permission(why) => Error::new(ErrorKind::Permission, why),
        StateError::Gone(age) => {
            let heartbeat = if age <= -HEARTBEAT_FRESH_SECS {
                format!("its heartbeat lies {:.1}s in the future", -age)
            } else if age < HEARTBEAT_FRESH_SECS {
                format!("its heartbeat is {age:.3}s old, but nobody writes it any more")
            } else {
                format!("its heartbeat is too old ({age:.1}s)")
            };
            Error::new(
                ErrorKind::AgentNotResponding,
                format!(
                    "Agent at {p} is gone: {heartbeat}, and no process (in this pid namespace) holds the state LMDB's \
                     lock with the file open for writing, so the agent that wrote these files has exited and left \
                     them behind (waited {secs:.3}s). Start the agent again (its launch script clears the old files; \
                     `etb gc --dead-agents` removes them). {hint}"
                ),
            )
        }
        other => {
            let why = match other {
                StateError::NoDatabase => "The state LMDB has no 'pair_state' database yet".to_string(),
                StateError::NoHeartbeat => "Heartbeat is missing".to_string(),
                StateError::BadHeartbeat(v) => format!("Heartbeat {v:?} is not a finite number of seconds"),
                StateError::Stale(age) if age < 0.0 => {
                    format!("Heartbeat lies {:.3}s in the future", -age)
                }
                StateError::Stale(age) => {
                    format!("Heartbeat is too old ({age:.3}s; fresh means under {HEARTBEAT_FRESH_SECS}s)")
                }
                StateError::Missing(_)
                | StateError::Lmdb(_)
                | StateError::NotLmdb(_)
                | StateError::Permission(_)
                | StateError::Gone(_) => unreachable!("handled above"),
            };
            Error::new(
                ErrorKind::AgentNotResponding,
                format!("Agent at {p} is not responding after {secs:.3}s. {why}. Agent may have crashed or be stalled. {hint}"),
            )
        }
    }
}

/// The error bootstrap reports when the command queue could not be attached by its deadline.
pub fn queue_error(path: &Path, last: AttachError, secs: f64, origin: &Origin) -> Error {
    let p = path.display();
    let tail = format!(
        "The agent creates its queue before its state, so it may have crashed, or it uses another queue path ({origin})."
    );
    match last {
        AttachError::Permission(why) => Error::new(ErrorKind::Permission, why),
        AttachError::NotLmdb(why) => Error::new(
            ErrorKind::Lmdb,
            format!("Agent command queue at {p} is still not a usable LMDB file after {secs:.3}s: {why}"),
        ),
        AttachError::SameFileAsState => {
            Error::new(ErrorKind::Naming, format!("the command queue path {p} is the state LMDB itself (same file)"))
        }
        AttachError::MissingSemaphores(names) => Error::new(
            ErrorKind::AgentNotFound,
            format!(
                "Agent command queue at {p} is not ready after {secs:.3}s: semaphore {} missing. {tail}",
                names.join(" and ")
            ),
        ),
        AttachError::MissingFile => Error::new(
            ErrorKind::AgentNotFound,
            format!("Agent command queue LMDB not found at {p} after {secs:.3}s. {tail}"),
        ),
        AttachError::Semaphore(name, e) if e.errno == libc::ENAMETOOLONG => Error::new(
            ErrorKind::Naming,
            format!(
                "the command queue path {p} gives semaphore name {name:?}, longer than the {} bytes POSIX allows: \
                 use a shorter file name (the semaphores are named after the file's stem)",
                crate::sys::semaphore::MAX_NAME_LEN
            ),
        ),
        AttachError::Semaphore(name, e) => Error::new(
            ErrorKind::Ipc,
            format!("Agent command queue semaphore {name} could not be opened: {}", e.text()),
        ),
        AttachError::Lmdb(e) => Error::new(
            ErrorKind::Lmdb,
            format!("Agent command queue LMDB at {p} could not be opened after {secs:.3}s: {}", e.text()),
        ),
    }
}

/// Where the other agents of this node are, for a bootstrap that found none at its path: computed
/// once, at the deadline (it lists a folder).
pub(super) fn agents_elsewhere(origin: &Origin) -> String {
    let Some(template) = &origin.template else {
        return "A naming callback chose this path, so the library cannot list the node's other agents: \
                `etb status --state TEMPLATE --queue TEMPLATE` with the job's naming lists them."
            .to_string();
    };
    let found: Vec<i64> = template.scan().into_iter().filter(|&r| r != origin.agent_rank).collect();
    let folder = Path::new(&template.state).parent().map_or_else(String::new, |f| f.display().to_string());
    if found.is_empty() {
        return format!("No other agent's state file is in {folder} either.");
    }
    // Which of them live, by the verdict bootstrap uses (from /proc/locks: no environment of
    // theirs is opened here).
    let (live, gone): (Vec<i64>, Vec<i64>) =
        found.iter().partition(|&&r| !agent_life_at(&template.paths_for(r).state).gone(false));
    let mut text = format!(
        "No agent for rank {} there; agents found in {folder}: ranks {}",
        origin.agent_rank,
        rank_ranges(&found)
    );
    if !gone.is_empty() {
        text.push_str(&format!(
            " ({} gone, their files left: `etb gc --dead-agents` removes them)",
            if gone.len() == found.len() { "all".to_string() } else { format!("rank {}", rank_ranges(&gone)) }
        ));
    }
    // A job whose ranks start at 0 and uses the live agents from `first` on has that offset.
    if let (Some(global), offset, Some(&first)) = (origin.global_rank, origin.rank_offset.unwrap_or(0), live.first()) {
        if first != offset && live.contains(&(global + first)) {
            if offset == 0 {
                text.push_str(&format!(": is AGENT_RANK_OFFSET={first} missing?"));
            } else {
                text.push_str(&format!(": is AGENT_RANK_OFFSET={first} meant (it is {offset})?"));
            }
            return text;
        }
    }
    text.push('.');
    text
}
