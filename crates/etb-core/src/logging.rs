//! Logging through the `log` crate, set up once and lazily by the first exported call. `ETB_LOG`
//! sets the filter (`error`, `warn`, `info`, `debug`, `trace`, or `etha_tensor_bus=debug`); the
//! default is `warn`. Records that pass the filter go to standard error (via `env_logger`), or to
//! the sink the host installed ([`set_sink`]: the C ABI's `etb_set_log_callback`, the Python
//! package's bridge into `logging`). A Rust host that installed its own logger first keeps it,
//! and receives our records. Nothing else is ever printed.
//!
//! The library's records come from two crates (`etha_tensor_bus`, the C boundary, and
//! `etb_core`, everything else): a directive for `etha_tensor_bus` applies to both, so the
//! documented filter keeps its meaning whatever module logs.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, RwLock};

use log::{Level, Log, Metadata, Record};

use crate::error::{Error, ErrorKind, Result};

/// The environment variable that sets the log filter.
pub const LOG_ENV: &str = "ETB_LOG";

/// Where records go instead of standard error: (level, target, message). It may run on any
/// thread, several at once; it must not log through this library nor call [`set_sink`].
pub type Sink = Box<dyn Fn(Level, &str, &str) + Send + Sync>;

static INIT: Once = Once::new();
/// Whether our logger is the process's (a Rust host may have installed its own first).
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Held for reading while a record is delivered, so that once `set_sink` returns the previous
/// sink is never called again.
static SINK: RwLock<Option<Sink>> = RwLock::new(None);

thread_local! {
    static IN_SINK: Cell<bool> = const { Cell::new(false) };
}

struct Logger {
    stderr: env_logger::Logger,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.stderr.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.stderr.matches(record) || IN_SINK.try_with(Cell::get).unwrap_or(true) {
            return;
        }
        let sink = SINK.read().unwrap_or_else(|p| p.into_inner());
        match sink.as_ref() {
            Some(sink) => {
                let message = record.args().to_string();
                let _ = IN_SINK.try_with(|f| f.set(true));
                sink(record.level(), record.target(), &message);
                let _ = IN_SINK.try_with(|f| f.set(false));
            }
            None => self.stderr.log(record),
        }
    }

    fn flush(&self) {
        self.stderr.flush();
    }
}

/// Installs the logger on first use; later calls cost one atomic load.
pub fn init() {
    INIT.call_once(|| {
        let filter = filter_for(&std::env::var(LOG_ENV).unwrap_or_else(|_| "warn".to_string()));
        let stderr = env_logger::Builder::new().parse_filters(&filter).target(env_logger::Target::Stderr).build();
        let max = stderr.filter();
        if log::set_boxed_logger(Box::new(Logger { stderr })).is_ok() {
            log::set_max_level(max);
            INSTALLED.store(true, Ordering::Release);
        }
    });
}

/// Sends the records that pass `ETB_LOG` to `sink` (`None`: back to standard error). Once it
/// returns, the previous sink is never called again (a record being delivered to it finishes
/// first). `InvalidArgument` when called from inside a sink; `InvalidArgument` too when a Rust host
/// installed its own logger first (it receives the records; a sink would never be called).
pub fn set_sink(sink: Option<Sink>) -> Result<()> {
    init();
    if IN_SINK.try_with(Cell::get).unwrap_or(false) {
        return Err(Error::new(ErrorKind::InvalidArgument, "the log callback cannot be changed from inside it"));
    }
    if !INSTALLED.load(Ordering::Acquire) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "another logger was installed in this process first (a Rust host's): it receives the library's records",
        ));
    }
    *SINK.write().unwrap_or_else(|p| p.into_inner()) = sink;
    Ok(())
}

/// `ETB_LOG` as env_logger reads it: each `etha_tensor_bus[::path]=level` directive is repeated
/// for `etb_core` (the crate the path's module lives in now).
pub fn filter_for(etb_log: &str) -> String {
    let mut directives: Vec<String> = Vec::new();
    for d in etb_log.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        directives.push(d.to_string());
        if let Some((module, level)) = d.split_once('=') {
            if module == "etha_tensor_bus" {
                directives.push(format!("etb_core={level}"));
            } else if let Some(path) = module.strip_prefix("etha_tensor_bus::") {
                directives.push(format!("etb_core::{path}={level}"));
            }
        }
    }
    directives.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_directives_cover_the_core() {
        assert_eq!(filter_for("debug"), "debug");
        assert_eq!(filter_for("etha_tensor_bus=debug"), "etha_tensor_bus=debug,etb_core=debug");
        assert_eq!(filter_for("warn, etha_tensor_bus=trace"), "warn,etha_tensor_bus=trace,etb_core=trace");
        assert_eq!(filter_for("etha_tensor_bus::sys=info"), "etha_tensor_bus::sys=info,etb_core::sys=info");
        assert_eq!(filter_for("other=info"), "other=info");
    }
}
