//! Logging through the `log` crate, to standard error via `env_logger`, set up once and lazily
//! by the first exported call. `ETB_LOG` sets the filter (`error`, `warn`, `info`, `debug`,
//! `trace`, or `etha_tensor_bus=debug`); the default is `warn`. A Rust host that installed its
//! own logger first keeps it, and receives our records. Nothing else is ever printed.
//!
//! The library's records come from two crates (`etha_tensor_bus`, the C boundary, and
//! `etb_core`, everything else): a directive for `etha_tensor_bus` applies to both, so the
//! documented filter keeps its meaning whatever module logs.

use std::sync::Once;

/// The environment variable that sets the log filter.
pub const LOG_ENV: &str = "ETB_LOG";

static INIT: Once = Once::new();

/// Installs the logger on first use; later calls cost one atomic load.
pub fn init() {
    INIT.call_once(|| {
        let filter = filter_for(&std::env::var(LOG_ENV).unwrap_or_else(|_| "warn".to_string()));
        let _ = env_logger::Builder::new().parse_filters(&filter).target(env_logger::Target::Stderr).try_init();
    });
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
