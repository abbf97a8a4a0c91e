//! Sets the shared library's SONAME: `libetha_tensor_bus.so.0.<minor>` while the version is 0.x
//! (a minor release may break the ABI), `libetha_tensor_bus.so.<major>` from 1.0 on. Set here,
//! not through RUSTFLAGS, so that a plain `cargo build` produces it.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_default();
    let soname = if major == "0" {
        format!("libetha_tensor_bus.so.0.{minor}")
    } else {
        format!("libetha_tensor_bus.so.{major}")
    };
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    }
    println!("cargo:rustc-env=ETB_SONAME={soname}");
}
