//! Every export is visible as itself in the source and goes through the one boundary: a
//! `#[no_mangle] pub [unsafe] extern "C" fn etb_*` whose whole body is `status_boundary!({..})`
//! or `value_boundary!(sentinel, {..})` (which catch panics, record the error and name the export
//! in messages, `src/ffi/boundary.rs`). A function written otherwise fails here, and so does an
//! `extern "C"` function without `#[no_mangle]` or a `#[no_mangle]` one that is not an export.

use std::path::PathBuf;

/// One export as the source writes it: its name, the attribute line before its signature, and
/// the first line of its body.
struct Export {
    file: String,
    name: String,
    attribute: String,
    first_body_line: String,
    last_body_lines: (String, String),
}

fn exports() -> Vec<Export> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/ffi");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) =
                line.strip_prefix("pub unsafe extern \"C\" fn ").or_else(|| line.strip_prefix("pub extern \"C\" fn "))
            else {
                continue;
            };
            let name = rest.split('(').next().unwrap().to_string();
            // The signature ends at the first line ending with '{'; the function at the next "}".
            let open = (i..lines.len()).find(|&j| lines[j].ends_with('{')).unwrap();
            let close = (open..lines.len()).find(|&j| lines[j] == "}").unwrap();
            found.push(Export {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                name,
                attribute: lines[i - 1].to_string(),
                first_body_line: lines[open + 1].trim().to_string(),
                last_body_lines: (lines[close - 1].to_string(), lines[close].to_string()),
            });
        }
    }
    found
}

#[test]
fn every_export_is_a_plain_extern_fn_whose_body_is_the_boundary() {
    let exports = exports();
    assert!(exports.len() >= 50, "found only {} exports", exports.len());
    for e in &exports {
        let at = format!("{} in src/ffi/{}", e.name, e.file);
        assert!(e.name.starts_with("etb_"), "{at}: every export is named etb_*");
        assert_eq!(e.attribute, "#[no_mangle]", "{at}: the line before the signature must be #[no_mangle]");
        assert!(
            e.first_body_line == "status_boundary!({" || e.first_body_line.starts_with("value_boundary!("),
            "{at}: the body must be one boundary macro, found {:?}",
            e.first_body_line
        );
        assert!(
            e.last_body_lines.0.ends_with("})") && e.last_body_lines.1 == "}",
            "{at}: nothing may follow the macro, found {:?}",
            e.last_body_lines
        );
    }
}

#[test]
fn no_mangle_only_on_exports() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for dir in ["src", "src/ffi"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if line.trim() == "#[no_mangle]" {
                    let next = lines.get(i + 1).copied().unwrap_or("");
                    assert!(
                        next.starts_with("pub unsafe extern \"C\" fn etb_")
                            || next.starts_with("pub extern \"C\" fn etb_"),
                        "{}:{}: #[no_mangle] on something that is not a plain export: {next:?}",
                        path.display(),
                        i + 2
                    );
                }
                assert!(
                    !line.contains(concat!("ffi_", "fn!")),
                    "{}:{}: exports are plain functions",
                    path.display(),
                    i + 1
                );
            }
        }
    }
}
