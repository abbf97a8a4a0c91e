//! The floor of a bootstrap: the system work any worker client must do, measured part by part
//! with raw calls (no library code): the file checks, the two `mdb_env_open` calls with locking
//! (and the heartbeat read), the two `sem_open` calls, the agent lookup, and the worker lock.
//! Prints JSON.
//!
//!   cargo run --release --example bench-floor -- QUEUE_PATH STATE_PATH N

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::time::Instant;

use lmdb_sys as mdb;

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[v.len() / 10], v[(v.len() * 9) / 10])
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Opens an environment with locking (the timed part), reads one key if asked, returns the env.
unsafe fn open(path: &CString, flags: u32, map_size: usize, read: Option<(&[u8], &[u8])>) -> *mut mdb::MDB_env {
    let mut env = ptr::null_mut();
    assert_eq!(mdb::mdb_env_create(&mut env), 0);
    if map_size > 0 {
        mdb::mdb_env_set_mapsize(env, map_size);
    }
    mdb::mdb_env_set_maxdbs(env, 2);
    let rc = mdb::mdb_env_open(env, path.as_ptr(), mdb::MDB_NOSUBDIR | mdb::MDB_NOTLS | flags, 0o600);
    assert_eq!(rc, 0, "mdb_env_open");
    let (db, key) = read.unwrap_or((b"command_queue\0", b""));
    let mut txn = ptr::null_mut();
    assert_eq!(mdb::mdb_txn_begin(env, ptr::null_mut(), mdb::MDB_RDONLY, &mut txn), 0);
    let mut dbi = 0;
    assert_eq!(mdb::mdb_dbi_open(txn, db.as_ptr().cast(), 0, &mut dbi), 0);
    if !key.is_empty() {
        let mut k = mdb::MDB_val { mv_size: key.len(), mv_data: key.as_ptr() as *mut _ };
        let mut v = mdb::MDB_val { mv_size: 0, mv_data: ptr::null_mut() };
        assert_eq!(mdb::mdb_get(txn, dbi, &mut k, &mut v), 0);
    }
    mdb::mdb_txn_commit(txn);
    env
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (queue, state, n) = (Path::new(&args[1]), Path::new(&args[2]), args[3].parse::<usize>().unwrap());
    let stem = queue.file_stem().unwrap().to_string_lossy().into_owned();
    let (q, s) = (c(queue), c(state));
    let lock = c(Path::new(&format!("{}-lock", state.display())));
    let worker = c(&state.with_file_name(format!(".{}.floor", state.file_name().unwrap().to_string_lossy())));
    let sems = [CString::new(format!("/cq_{stem}")).unwrap(), CString::new(format!("/cq_space_{stem}")).unwrap()];
    let mut parts: Vec<(&str, Vec<f64>)> = [
        "file checks",
        "state mdb_env_open + heartbeat read",
        "queue mdb_env_open",
        "sem_open x2",
        "agent lookup",
        "worker lock",
    ]
    .into_iter()
    .map(|name| (name, Vec::with_capacity(n)))
    .collect();
    for _ in 0..n {
        // SAFETY: system calls on NUL-terminated paths that live for the loop, out-pointers to locals, and LMDB calls in the order its documentation requires; every handle is closed before the next iteration.
        unsafe {
            // File checks: both files exist (stat), the state lock file can be written (open).
            let t = Instant::now();
            let mut st: libc::stat = std::mem::zeroed();
            libc::stat(s.as_ptr(), &mut st);
            libc::stat(q.as_ptr(), &mut st);
            let fd = libc::open(lock.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            parts[0].1.push(t.elapsed().as_secs_f64());
            // Agent lookup: F_GETLK on the lock file, then the holder's open files.
            let t = Instant::now();
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_WRLCK as _;
            fl.l_len = 1;
            libc::fcntl(fd, libc::F_GETLK, &mut fl);
            if fl.l_pid > 0 {
                let _ = std::fs::read_dir(format!("/proc/{}/fd", fl.l_pid)).map(|d| d.count());
            }
            parts[4].1.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let se = open(&s, mdb::MDB_RDONLY, 0, Some((b"pair_state\0", b"agent:heartbeat")));
            parts[1].1.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let qe = open(&q, 0, 1 << 30, None);
            parts[2].1.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let handles: Vec<_> = sems.iter().map(|n| libc::sem_open(n.as_ptr(), 0)).collect();
            parts[3].1.push(t.elapsed().as_secs_f64());
            // One worker per agent: a record lock on a file next to the state.
            let t = Instant::now();
            let wfd = libc::open(worker.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC, 0o600);
            let mut wl: libc::flock = std::mem::zeroed();
            wl.l_type = libc::F_WRLCK as _;
            libc::fcntl(wfd, libc::F_SETLK, &wl);
            parts[5].1.push(t.elapsed().as_secs_f64());
            libc::close(wfd);
            for h in handles {
                assert_ne!(h, libc::SEM_FAILED);
                libc::sem_close(h);
            }
            mdb::mdb_env_close(qe);
            mdb::mdb_env_close(se);
            libc::close(fd);
        }
    }
    // SAFETY: a NUL-terminated path that outlives the call.
    unsafe { libc::unlink(worker.as_ptr()) };
    let mut total = 0.0;
    let mut items = Vec::new();
    for (name, v) in parts {
        let (m, p10, p90) = median(v);
        total += m;
        items.push(format!(
            "\"{name}\": {{\"median\": {:.3}, \"p10\": {:.3}, \"p90\": {:.3}}}",
            m * 1e6,
            p10 * 1e6,
            p90 * 1e6
        ));
    }
    println!(
        "{{\"n\": {n}, \"unit\": \"us\", \"total_median\": {:.3}, \"parts\": {{{}}}}}",
        total * 1e6,
        items.join(", ")
    );
}
