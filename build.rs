//! Sets the shared library's SONAME, `libetha_tensor_bus.so.0.<minor>` while the version is 0.x
//! (a minor release may break the ABI), `libetha_tensor_bus.so.<major>` from 1.0 on, but only in
//! the installing builds: those that set `ETB_SET_SONAME=1` (the CMake build does). A plain
//! `cargo build` leaves a library without a SONAME, so a program linked against
//! `target/<profile>/libetha_tensor_bus.so` records that file name and runs against it there
//! (with `LD_LIBRARY_PATH` or an rpath); with a SONAME it would look for a
//! `libetha_tensor_bus.so.0.<minor>` that only an install makes.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ETB_SET_SONAME");
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_default();
    let soname = if major == "0" {
        format!("libetha_tensor_bus.so.0.{minor}")
    } else {
        format!("libetha_tensor_bus.so.{major}")
    };
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if linux && std::env::var("ETB_SET_SONAME").as_deref() == Ok("1") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    }
}
