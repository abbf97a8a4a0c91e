//! The README's complete worker programs are the files under `examples/` that the test command
//! builds and runs (tests/CMakeLists.txt: `c11/example_worker`, `cxx17/example_worker`,
//! `c11/example_epoll`, `cxx17/example_gpus`; tests/torch/test_examples.py;
//! tests/python/test_dlpack.py runs examples/python/jax_worker.py): a copy that differs
//! from its file fails here.

use std::path::PathBuf;

#[test]
fn the_readme_shows_each_example_worker_as_it_is() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for (path, lang) in [
        ("examples/c/worker.c", "c"),
        ("examples/cpp/worker.cpp", "cpp"),
        ("examples/python/worker.py", "python"),
        ("examples/c/epoll.c", "c"),
        ("examples/python/asyncio_worker.py", "python"),
        ("examples/cpp/gpus.cpp", "cpp"),
        ("examples/python/jax_worker.py", "python"),
    ] {
        let file = std::fs::read_to_string(root.join(path)).unwrap();
        assert!(readme.contains(&format!("`{path}`")), "the README does not name {path}");
        assert!(
            readme.contains(&format!("```{lang}\n{file}```\n")),
            "the README's copy of {path} differs from the file (or is missing): paste the file into its ```{lang} block"
        );
    }
}
