//! The checked-in header must be exactly what the pinned cbindgen generates from the sources.
//! `ETB_BLESS_HEADER=1 cargo test --test header` rewrites it.

use std::path::PathBuf;

#[test]
fn header_is_fresh() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_src(root.join("src/ffi/mod.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = root.join("include/etha_tensor_bus.h");
    if std::env::var_os("ETB_BLESS_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write header");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/etha_tensor_bus.h is stale: regenerate it with `ETB_BLESS_HEADER=1 cargo test --test header` and commit it"
    );
}
