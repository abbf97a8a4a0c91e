//! The source tree's import rules, checked on the sources themselves:
//!
//! 1. etb-core's layer rule (its `lib.rs`): a module imports only from its own layer or those
//!    below it. Every `crate::` path counts, in `use` lines (braces and all) and inline
//!    (`crate::sys::registry::FileId` in an expression).
//! 2. No import cycle between the files of any crate of the workspace (etb-core, the C ABI,
//!    etb-cli, etb-dev-agent). A module's `mod.rs` using or re-exporting its own children is
//!    structure, not an import, so those edges are left out; every other `crate::`, `super::`,
//!    `self::` and child-module path is an edge from its file to the file that defines the
//!    module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// etb-core's layers, bottom up (the order its `lib.rs` gives).
const CORE_LAYERS: &[&[&str]] = &[
    &["error", "timeout", "logging"],
    &["sys"],
    &["lmdb"],
    &["cuda"],
    &["protocol"],
    &["payload"],
    &["connection"],
    &["client", "bootstrap"],
];

/// A crate's source tree: module path -> file.
struct Tree {
    root: PathBuf,
    modules: BTreeMap<Vec<String>, PathBuf>,
}

impl Tree {
    fn new(src: &Path, root_file: &str) -> Tree {
        let mut modules = BTreeMap::new();
        modules.insert(Vec::new(), src.join(root_file));
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let rel: Vec<String> = path
                    .strip_prefix(src)
                    .unwrap()
                    .with_extension("")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                let mut module = rel.clone();
                if module.last().is_some_and(|l| l == "mod") {
                    module.pop();
                }
                if rel.len() == 1 && (rel[0] == "lib" || rel[0] == "main") {
                    continue;
                }
                modules.insert(module, path);
            }
        }
        Tree { root: src.to_path_buf(), modules }
    }

    fn module_of(&self, file: &Path) -> Vec<String> {
        self.modules.iter().find(|(_, f)| f.as_path() == file).map(|(m, _)| m.clone()).unwrap()
    }

    /// The file of the deepest module that `path` (absolute, from the crate root) names.
    fn file_of(&self, path: &[String]) -> Option<&PathBuf> {
        (0..=path.len()).rev().find_map(|n| self.modules.get(&path[..n]))
    }
}

/// The source without comments, string and char literals (so that their text is not read as
/// paths).
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'r' && (b[i + 1..].starts_with(b"\"") || b[i + 1..].starts_with(b"#\"")) {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            i += 2 + hashes;
            while i < b.len() && !b[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x' or '\n'); a lifetime ('a) has no closing quote there.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Expands a use tree (`a::{b, c::{d as e, self}}`) into its paths.
fn expand_use(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let mut head: Vec<String> = prefix.to_vec();
        head.extend(tree[..open].split("::").map(str::trim).filter(|s| !s.is_empty()).map(String::from));
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_use(&inner[start..i], &head, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand_use(&inner[start..], &head, out);
        return;
    }
    let tree = tree.split(" as ").next().unwrap().trim();
    if tree.is_empty() {
        return;
    }
    let mut path: Vec<String> = prefix.to_vec();
    path.extend(tree.split("::").map(|s| s.trim().to_string()).filter(|s| s != "self" && s != "*"));
    out.push(path);
}

/// Every path the file names that starts at `crate`, `super` or `self`, or at one of its own
/// child modules, resolved to an absolute module path.
fn paths_of(tree: &Tree, file: &Path) -> Vec<Vec<String>> {
    let here = tree.module_of(file);
    let is_mod_file = file.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs" || n == "main.rs");
    let text = strip(&std::fs::read_to_string(file).unwrap());
    let mut raw: Vec<Vec<String>> = Vec::new();
    let mut rest = text.as_str();
    // `use` declarations, braces and all.
    while let Some(at) = rest.find("use ") {
        let before_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        if before_ok {
            expand_use(&after[..end], &[], &mut raw);
        }
        rest = &after[end.min(after.len())..];
    }
    // Inline paths.
    let bytes = text.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(start) {
            let at = from + pos;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':') {
                continue;
            }
            let tail: String =
                text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
            raw.push(tail.split("::").filter(|s| !s.is_empty()).map(String::from).collect());
        }
    }
    let parent_of_items = if is_mod_file { here.clone() } else { here[..here.len().saturating_sub(1)].to_vec() };
    let mut resolved = Vec::new();
    for path in raw {
        let Some(first) = path.first() else { continue };
        let mut module: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "self" => here.clone(),
            "super" => parent_of_items.clone(),
            child => {
                // A child module of this one (2018 paths: `use link::Link;` in client/mod.rs).
                let mut m = here.clone();
                m.push(child.to_string());
                if !tree.modules.contains_key(&m) {
                    continue;
                }
                resolved.push(m.iter().cloned().chain(path[1..].iter().cloned()).collect());
                continue;
            }
        };
        let mut segments = path[1..].iter().peekable();
        while segments.peek().is_some_and(|s| *s == "super") {
            module.pop();
            segments.next();
        }
        module.extend(segments.cloned());
        resolved.push(module);
    }
    resolved
}

/// The import edges between a crate's files (a `mod.rs`'s edges into its own subtree, and the
/// crate root's, left out).
fn edges(tree: &Tree) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut graph = BTreeMap::new();
    for (module, file) in &tree.modules {
        let is_root = module.is_empty();
        let is_mod_file = file.file_name().is_some_and(|n| n == "mod.rs");
        let mut targets = BTreeSet::new();
        for path in paths_of(tree, file) {
            let Some(target) = tree.file_of(&path) else { continue };
            let target_module = tree.module_of(target);
            if target == file || is_root || (is_mod_file && target_module.starts_with(module)) {
                continue;
            }
            targets.insert(target.clone());
        }
        graph.insert(file.clone(), targets);
    }
    graph
}

fn find_cycle(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Option<Vec<PathBuf>> {
    fn visit(
        node: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        state: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn layer_of(module: &[String]) -> Option<usize> {
    let top = module.first()?;
    CORE_LAYERS.iter().position(|layer| layer.contains(&top.as_str()))
}

/// The violations of the layer rule in a tree whose top-level modules are `CORE_LAYERS`.
fn layer_violations(tree: &Tree) -> Vec<String> {
    let mut found = Vec::new();
    for (module, file) in &tree.modules {
        let Some(layer) = layer_of(module) else { continue };
        for path in paths_of(tree, file) {
            let Some(target) = tree.file_of(&path) else { continue };
            let Some(target_layer) = layer_of(&tree.module_of(target)) else { continue };
            if target_layer > layer {
                found.push(format!(
                    "{} (layer {layer}) imports {} (layer {target_layer}): crate::{}",
                    file.strip_prefix(&tree.root).unwrap().display(),
                    target.strip_prefix(&tree.root).unwrap().display(),
                    path.join("::")
                ));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn the_core_keeps_its_layers() {
    let tree = Tree::new(&workspace().join("crates/etb-core/src"), "lib.rs");
    for layer in CORE_LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(tree.modules.contains_key(&vec![layer.to_string()]), "etb-core has no module {layer}");
    }
    for module in tree.modules.keys().filter(|m| m.len() == 1) {
        assert!(
            layer_of(module).is_some(),
            "etb-core's module {module:?} has no layer in CORE_LAYERS (tests/layers.rs)"
        );
    }
    let violations = layer_violations(&tree);
    assert!(violations.is_empty(), "the layer rule is broken:\n{}", violations.join("\n"));
}

#[test]
fn no_import_cycle_in_any_crate() {
    let root = workspace();
    for (src, root_file) in [
        ("crates/etb-core/src", "lib.rs"),
        ("src", "lib.rs"),
        ("crates/etb-cli/src", "main.rs"),
        ("crates/etb-dev-agent/src", "main.rs"),
    ] {
        let tree = Tree::new(&root.join(src), root_file);
        assert!(tree.modules.len() > 1, "{src}: no modules found");
        if let Some(cycle) = find_cycle(&edges(&tree)) {
            let names: Vec<String> =
                cycle.iter().map(|f| f.strip_prefix(&root).unwrap().display().to_string()).collect();
            panic!("import cycle in {src}: {}", names.join(" -> "));
        }
    }
}

/// The checks can fail: a scratch tree with a lower layer importing a higher one (inline, deep in
/// an expression) and two siblings importing each other.
#[test]
fn the_checks_see_a_violation_and_a_cycle() {
    let dir = std::env::temp_dir().join(format!("etb-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sys")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod sys;\npub mod lmdb;\n").unwrap();
    std::fs::write(dir.join("sys/mod.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(
        dir.join("sys/a.rs"),
        "use super::b::{X, Y as Z};\nfn f() { let _ = crate::lmdb::registry::FileId::new(); }\n",
    )
    .unwrap();
    std::fs::write(dir.join("sys/b.rs"), "// crate::lmdb in a comment is not a path\nuse crate::sys::a;\n").unwrap();
    std::fs::write(dir.join("lmdb.rs"), "use crate::sys::a::Thing;\n").unwrap();
    let tree = Tree::new(&dir, "lib.rs");
    let violations = layer_violations(&tree);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("sys/a.rs (layer 1) imports lmdb.rs (layer 2): crate::lmdb::registry::FileId"));
    let cycle = find_cycle(&edges(&tree)).expect("a and b import each other");
    assert_eq!(cycle.len(), 3, "{cycle:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
