//! Architecture invariants, checked as ordinary tests (in the manner of
//! rust-analyzer's `tidy.rs`). Each one states a rule of docs/ARCHITECTURE.md
//! and fails, naming the file and line, when the code breaks it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace root").to_path_buf()
}

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// Lines of `files` containing any of `patterns`, as `path:line: text`.
fn offending_lines(files: &[PathBuf], patterns: &[&str]) -> Vec<String> {
    let root = workspace_root();
    let mut hits = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("readable source file");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if patterns.iter().any(|p| code.contains(p)) {
                let shown = file.strip_prefix(&root).unwrap_or(file).display();
                hits.push(format!("{shown}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    hits
}

/// Architecture Invariant: paymesh-core depends on nothing that does I/O, runs
/// async, or replicates: its dependency tree holds no tokio, tonic, sled, actix,
/// openraft or rand.
#[test]
fn core_dependency_tree_has_no_runtime_or_storage_crates() {
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["tree", "-p", "paymesh-core", "-e", "normal", "--prefix", "none", "--locked", "--offline"])
        .output()
        .expect("run cargo tree");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout).unwrap();
    assert!(tree.contains("rust_decimal"), "cargo tree output looks wrong:\n{tree}");
    let forbidden = ["tokio", "tonic", "sled", "actix", "openraft", "rand", "mio", "hyper"];
    let found: Vec<&str> =
        tree.lines().filter(|line| forbidden.iter().any(|f| line.split_whitespace().next() == Some(f))).collect();
    assert!(found.is_empty(), "paymesh-core must stay pure, but depends on: {found:?}");
}

/// Architecture Invariant: paymesh-core reads no clock, touches no file, socket
/// or thread, and iterates no hash map (whose order differs per process), so
/// every replica computes the same state. Money never touches a float.
#[test]
fn core_source_does_no_io_reads_no_clock_and_uses_no_floats() {
    let files = rust_files(&workspace_root().join("crates/paymesh-core/src"));
    assert!(files.len() > 5, "expected the core's sources, found {files:?}");
    let hits = offending_lines(
        &files,
        &[
            "std::time::",
            "SystemTime",
            "Instant::",
            "std::fs",
            "std::net",
            "std::thread",
            "std::env",
            "HashMap",
            "HashSet",
            "f32",
            "f64",
            "println!",
            "eprintln!",
        ],
    );
    assert!(hits.is_empty(), "paymesh-core must stay pure and deterministic:\n{}", hits.join("\n"));
}

/// No test is skipped without saying why, and no placeholder is left in code.
#[test]
fn no_bare_ignore_and_no_placeholders() {
    let root = workspace_root();
    let mut files = rust_files(&root.join("crates"));
    files.extend(rust_files(&root.join("tests")));
    // This file names the patterns it looks for.
    files.retain(|f| !f.ends_with("tests/tidy.rs"));
    let ignore = offending_lines(&files, &["#[ignore]"]);
    assert!(ignore.is_empty(), "write #[ignore = \"why\"]:\n{}", ignore.join("\n"));
    let placeholders = offending_lines(&files, &["todo!(", "unimplemented!("]);
    assert!(placeholders.is_empty(), "placeholders left in code:\n{}", placeholders.join("\n"));
}

/// The checker itself can fail: it finds a forbidden pattern in a file that has one.
#[test]
fn the_checker_reports_what_it_is_asked_to_find() {
    let dir = std::env::temp_dir().join(format!("paymesh-tidy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.rs");
    std::fs::write(
        &file,
        "fn f() {\n    let t = std::time::SystemTime::now(); // a clock read\n}\n// std::fs in a comment is fine\n",
    )
    .unwrap();
    let hits = offending_lines(&[file], &["std::time::", "std::fs"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert!(hits[0].ends_with("bad.rs:2: let t = std::time::SystemTime::now(); // a clock read"), "{hits:?}");
}

/// CI runs exactly the test command the README gives, so what a new engineer
/// runs is what protects main.
#[test]
fn ci_runs_the_readme_test_command() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let section = readme.split("## Running the tests").nth(1).expect("README has a 'Running the tests' section");
    let command = section
        .split("```sh")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .map(str::trim)
        .expect("the section gives the command in a sh block");
    assert!(command.starts_with("cargo test"), "unexpected test command {command:?}");
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(ci.contains(command), ".ci/run must run the README's test command {command:?}");
    for check in ["cargo fmt --all -- --check", "cargo clippy --workspace --all-targets --locked -- -D warnings"] {
        assert!(ci.contains(check), ".ci/run must run {check:?}");
    }
    assert!(ci.contains("set -euo pipefail"), ".ci/run must fail when a step fails");
}
