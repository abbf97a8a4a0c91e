//! The checked-in header must be exactly what the pinned cbindgen generates from the sources.
//! `ETB_BLESS_HEADER=1 cargo test --test header` rewrites it.
//!
//! Every export is a plain `#[no_mangle] pub [unsafe] extern "C" fn` in the source (its boundary
//! is a macro inside its body, `tests/exports.rs` checks that), so cbindgen parses the sources as
//! they are: no macro expansion, no unstable compiler interface.

use std::path::PathBuf;

#[test]
fn header_is_fresh() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let generated = generate(&root);
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

#[test]
fn every_export_is_in_the_header() {
    // A function cbindgen failed to see would be missing from the header while still exported:
    // compare with the sources' `extern "C" fn etb_` items.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let header = String::from_utf8(std::fs::read(root.join("include/etha_tensor_bus.h")).unwrap()).unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("src/ffi")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let line = line.trim_start();
            let rest = line
                .strip_prefix("pub unsafe extern \"C\" fn etb_")
                .or_else(|| line.strip_prefix("pub extern \"C\" fn etb_"));
            if let Some(rest) = rest {
                names.push(format!("etb_{}", rest.split('(').next().unwrap()));
            }
        }
    }
    assert!(names.len() >= 30, "found only {names:?}");
    for name in names {
        assert!(
            header.contains(&format!(" {name}(")) || header.contains(&format!("*{name}(")),
            "{name} is not in the header"
        );
    }
}

#[test]
fn the_headers_dtypes_are_the_cores() {
    // The core's table (number, torch's name, size) is the source: src/ffi/payload.rs writes one
    // ETB_DTYPE_* constant per entry, literal for cbindgen. Every macro must be a core dtype of
    // that number and name, and every core dtype a macro.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(root.join("include/etha_tensor_bus.h")).unwrap();
    let macros: Vec<(i32, String)> = header
        .lines()
        .filter_map(|line| line.strip_prefix("#define ETB_DTYPE_"))
        .map(|rest| {
            let (name, value) = rest.split_once(' ').expect("#define ETB_DTYPE_X N");
            (value.trim().parse().expect("a number"), name.to_string())
        })
        .collect();
    let core: Vec<(i32, String)> =
        etb_core::payload::dtype::DTYPES.iter().map(|(code, name, _)| (*code, name.to_uppercase())).collect();
    assert_eq!(
        macros, core,
        "the header's ETB_DTYPE_* (src/ffi/payload.rs) are not the core's DTYPES (payload/dtype.rs)"
    );
}

fn generate(root: &std::path::Path) -> Vec<u8> {
    let mut config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    // The version macros are derived from Cargo.toml's version, which cbindgen cannot evaluate
    // (src/ffi/version.rs); cbindgen.toml's after_includes (the DLPack declarations) follow them.
    let mut after = etha_tensor_bus::ffi::version::header_macros();
    if let Some(more) = config.after_includes.take() {
        after = format!("{}\n{}", after.trim_end(), more);
    }
    let bindings = cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .with_after_include(after)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    generated
}
