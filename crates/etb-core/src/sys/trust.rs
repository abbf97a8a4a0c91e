//! Trusting only our own agent (the hardening rules): before the library opens the agent's files
//! and semaphores, each must belong to our effective uid (or root), must not be writable by others
//! (nor by the group, unless the caller allows a shared group that is one of ours), and must not be
//! a symbolic link; the agent process must run as our uid or as root. /tmp is writable by everyone
//! on shared nodes: without this, anyone could stand in for the agent and receive the worker's CUDA
//! IPC handles.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, ErrorKind};

/// What the caller allows beyond the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Files and semaphores may be group-writable when their group is one of ours.
    pub allow_shared_group: bool,
}

/// Why a file is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distrust {
    /// It does not exist (yet).
    Missing,
    /// It exists but is not a regular file (a FIFO, a directory, a device...): may be an agent
    /// halfway through creating it, so the caller polls, then reports an LMDB error.
    NotRegular(String),
    /// Owner, mode or a symlink: a permission error, reported at once.
    Permission(String),
}

impl Distrust {
    pub fn into_error(self) -> Error {
        match self {
            Distrust::Missing => Error::new(ErrorKind::AgentNotFound, "missing"),
            Distrust::NotRegular(m) => Error::new(ErrorKind::Lmdb, m),
            Distrust::Permission(m) => Error::new(ErrorKind::Permission, m),
        }
    }
}

fn our_groups() -> Vec<libc::gid_t> {
    // SAFETY: getgroups with a buffer of the size it reports.
    unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        let mut g = vec![0; n.max(0) as usize];
        let n = libc::getgroups(g.len() as i32, g.as_mut_ptr());
        g.truncate(n.max(0) as usize);
        g.push(libc::getegid());
        g
    }
}

/// Checks owner and mode of a stat result; `what` names the object in messages.
pub fn check_owner_and_mode(st: &libc::stat, what: &str, policy: TrustPolicy) -> Result<(), Distrust> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mode = st.st_mode & 0o7777;
    let detail = || format!("{what} is owned by uid {} (gid {}) with mode {:04o}", st.st_uid, st.st_gid, mode);
    if st.st_uid != euid && st.st_uid != 0 {
        return Err(Distrust::Permission(format!(
            "{}: it must belong to this process's user (uid {euid}) or to root; refusing to talk to an agent of another user",
            detail()
        )));
    }
    if mode & 0o002 != 0 {
        return Err(Distrust::Permission(format!("{}: it is writable by every user; refusing it", detail())));
    }
    if mode & 0o020 != 0 && !(policy.allow_shared_group && our_groups().contains(&st.st_gid)) {
        return Err(Distrust::Permission(format!(
            "{}: it is writable by its group; allow that with allow_shared_group if the group is yours",
            detail()
        )));
    }
    Ok(())
}

/// Checks the folder holding `path`: owned by us or root, and not writable by others (nor by the
/// group, unless allowed) unless it is sticky (like /tmp): otherwise another user could swap the
/// files between our checks and LMDB's own opens.
pub fn check_folder(path: &Path, what: &str, policy: TrustPolicy) -> Result<(), Distrust> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // stat follows symlinks: the folder actually used is checked.
    let st = crate::sys::fs::stat(folder).map_err(|_| Distrust::Missing)?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mode = st.st_mode & 0o7777;
    let sticky = mode & libc::S_ISVTX != 0;
    let detail =
        || format!("the folder {} of {what} is owned by uid {} with mode {:04o}", folder.display(), st.st_uid, mode);
    if st.st_uid != euid && st.st_uid != 0 {
        return Err(Distrust::Permission(format!("{}: it must belong to this user (uid {euid}) or to root", detail())));
    }
    if !sticky && mode & 0o002 != 0 {
        return Err(Distrust::Permission(format!("{}: writable by every user and not sticky; refusing it", detail())));
    }
    if !sticky && mode & 0o020 != 0 && !(policy.allow_shared_group && our_groups().contains(&st.st_gid)) {
        return Err(Distrust::Permission(format!("{}: writable by its group and not sticky", detail())));
    }
    Ok(())
}

/// Checks a file the library is about to open: in a trusted folder, a regular file (not a
/// symlink) that we trust.
pub fn check_file(path: &Path, what: &str, policy: TrustPolicy) -> Result<libc::stat, Distrust> {
    check_folder(path, what, policy)?;
    let st = match crate::sys::fs::lstat(path) {
        Ok(st) => st,
        // A name too long to exist is as missing as an absent one (the open reports the length).
        Err(libc::ENOENT | libc::ENAMETOOLONG | libc::ENOTDIR) => return Err(Distrust::Missing),
        Err(e) => {
            return Err(Distrust::Permission(format!("{what} {}: {}", path.display(), crate::error::errno_text(e))))
        }
    };
    let kind = st.st_mode & libc::S_IFMT;
    if kind == libc::S_IFLNK {
        return Err(Distrust::Permission(format!(
            "{what} {} is a symbolic link: refused (point the naming function at the real file)",
            path.display()
        )));
    }
    check_owner_and_mode(&st, &format!("{what} {}", path.display()), policy)?;
    if kind != libc::S_IFREG {
        return Err(Distrust::NotRegular(format!(
            "{what} {} is not a regular file (file type {:o})",
            path.display(),
            kind >> 12
        )));
    }
    Ok(st)
}

/// Checks a POSIX named semaphore through its file in /dev/shm (glibc: `sem.{name}`; /dev/shm
/// itself is root's and sticky).
pub fn check_semaphore(name: &[u8], policy: TrustPolicy) -> Result<(), Distrust> {
    let file = [b"/dev/shm/sem.", name.strip_prefix(b"/").unwrap_or(name)].concat();
    let path = Path::new(std::ffi::OsStr::from_bytes(&file));
    let what = format!("semaphore {}", String::from_utf8_lossy(name));
    match check_file(path, &what, policy) {
        Err(Distrust::NotRegular(m)) => Err(Distrust::Permission(m)),
        other => other.map(|_| ()),
    }
}

/// The effective uid of process `pid` (from /proc/PID/status), if readable.
pub fn process_euid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The agent process must run as our user or as root.
pub fn check_agent_process(pid: i32) -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    match process_euid(pid) {
        Some(uid) if uid == euid || uid == 0 => Ok(()),
        Some(uid) => Err(Error::new(
            ErrorKind::Permission,
            format!("the agent process {pid} runs as uid {uid}, not as this user (uid {euid}) or root: refused"),
        )),
        // It exited meanwhile, or /proc hides it: the file checks already vouched for the files.
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(uid: u32, gid: u32, mode: u32) -> libc::stat {
        // SAFETY: libc::stat is plain data: all-zero bytes are a valid value.
        let mut s: libc::stat = unsafe { std::mem::zeroed() };
        s.st_uid = uid;
        s.st_gid = gid;
        s.st_mode = libc::S_IFREG | mode;
        s
    }

    #[test]
    fn owner_and_mode_rules() {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        // SAFETY: getegid has no preconditions.
        let my_gid = unsafe { libc::getegid() };
        let p = TrustPolicy::default();
        assert!(check_owner_and_mode(&st(me, 0, 0o600), "f", p).is_ok());
        assert!(check_owner_and_mode(&st(0, 0, 0o644), "f", p).is_ok());
        assert!(check_owner_and_mode(&st(me, 0, 0o755), "f", p).is_ok());
        let other = if me == 12345 { 12346 } else { 12345 };
        if me != 0 || other != 0 {
            let e = check_owner_and_mode(&st(other, 0, 0o600), "f", p).unwrap_err();
            assert!(
                matches!(&e, Distrust::Permission(m) if m.contains(&format!("uid {other}")) && m.contains("0600")),
                "{e:?}"
            );
        }
        assert!(
            matches!(check_owner_and_mode(&st(me, 0, 0o666), "f", p), Err(Distrust::Permission(m)) if m.contains("every user"))
        );
        assert!(
            matches!(check_owner_and_mode(&st(me, my_gid, 0o660), "f", p), Err(Distrust::Permission(m)) if m.contains("group"))
        );
        let shared = TrustPolicy { allow_shared_group: true };
        assert!(check_owner_and_mode(&st(me, my_gid, 0o660), "f", shared).is_ok());
        let not_mine = (1..60000).find(|g| !our_groups().contains(g)).unwrap();
        assert!(check_owner_and_mode(&st(me, not_mine, 0o660), "f", shared).is_err());
        assert!(check_owner_and_mode(&st(me, my_gid, 0o662), "f", shared).is_err());
    }

    #[test]
    fn files_of_every_kind() {
        let dir = std::env::temp_dir().join(format!("etb-lmdb-unit-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = TrustPolicy::default();
        let f = dir.join("f");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert!(check_file(&f, "file", p).is_ok());
        assert_eq!(check_file(&dir.join("none"), "file", p).unwrap_err(), Distrust::Missing);
        std::os::unix::fs::symlink(&f, dir.join("l")).unwrap();
        assert!(
            matches!(check_file(&dir.join("l"), "file", p), Err(Distrust::Permission(m)) if m.contains("symbolic link"))
        );
        let fifo = std::ffi::CString::new(dir.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(matches!(check_file(&dir.join("fifo"), "file", p), Err(Distrust::NotRegular(_))));
        std::fs::create_dir(dir.join("d")).unwrap();
        std::fs::set_permissions(dir.join("d"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        assert!(matches!(check_file(&dir.join("d"), "file", p), Err(Distrust::NotRegular(_))));
        std::fs::remove_dir_all(&dir).unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(process_euid(std::process::id() as i32), Some(unsafe { libc::geteuid() }));
        assert!(check_agent_process(std::process::id() as i32).is_ok());
    }
}
