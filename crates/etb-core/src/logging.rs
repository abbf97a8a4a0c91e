//! Logging through the `log` crate, to standard error via `env_logger`, set up once and lazily
//! by the first exported call. `ETB_LOG` sets the filter (`error`, `warn`, `info`, `debug`,
//! `trace`, or `etha_tensor_bus=debug`); the default is `warn`. A Rust host that installed its
//! own logger first keeps it, and receives our records. Nothing else is ever printed.

use std::sync::Once;

/// The environment variable that sets the log filter.
pub const LOG_ENV: &str = "ETB_LOG";

static INIT: Once = Once::new();

/// Installs the logger on first use; later calls cost one atomic load.
pub fn init() {
    INIT.call_once(|| {
        let filter = std::env::var(LOG_ENV).unwrap_or_else(|_| "warn".to_string());
        let _ = env_logger::Builder::new().parse_filters(&filter).target(env_logger::Target::Stderr).try_init();
    });
}
