//! The README's recipe for a region on one machine, run as written: the
//! blocks of README.md marked as the recipe (` ```sh recipe ` scripts and
//! ` ```toml recipe FILE ` files), in order, from a directory laid out as a
//! clone's root. Three nodes over mutual TLS, the region's first
//! configuration and a partner's first payment through the partner API
//! from a client generated from the `.proto` files (Python grpcio, which the
//! recipe installs from PyPI: python3 and PyPI are required, never skipped).
//!
//! One line is not run as written: `cargo build --release --locked`, for
//! which this test's own build of `paymesh` stands in at
//! `target/release/paymesh`. The nodes listen on the recipe's fixed ports
//! (7101-7103, 8101-8103), below the range the other tests' ephemeral ports
//! come from.

#![allow(clippy::unwrap_used)]

use crate::common::repo;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the whole recipe may take (a first `pip install` included).
const RECIPE_TIMEOUT: Duration = Duration::from_secs(600);

/// The build line the test's binary stands in for.
const BUILD: &str = "cargo build --release --locked";

#[derive(Debug, PartialEq)]
enum Block {
    /// Shell commands.
    Script(String),
    /// A file's name and content.
    File(String, String),
}

/// The recipe's blocks of `readme`, in order.
fn recipe(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else { continue };
        let words: Vec<&str> = info.split_whitespace().collect();
        let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        let body = body.join("\n") + "\n";
        match words.as_slice() {
            ["sh", "recipe"] => blocks.push(Block::Script(body)),
            ["toml", "recipe", file] => blocks.push(Block::File((*file).to_owned(), body)),
            _ => {}
        }
    }
    blocks
}

#[test]
fn recipe_blocks_are_found_in_order() {
    let readme = "x\n```sh recipe\na\nb\n```\n```sh\nnot\n```\n```toml recipe n.toml\nk = 1\n```\n";
    assert_eq!(recipe(readme), [Block::Script("a\nb\n".into()), Block::File("n.toml".into(), "k = 1\n".into())]);
}

/// Ends the recipe's process group (the nodes it started in the
/// background) however the test ends.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let group = format!("-{}", self.0);
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
    }
}

#[test]
fn the_readme_recipe_brings_a_region_up_over_tls_and_makes_its_first_payment() {
    let repo = repo();
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let blocks = recipe(&readme);
    let scripts: Vec<&String> =
        blocks.iter().filter_map(|b| if let Block::Script(s) = b { Some(s) } else { None }).collect();
    assert!(scripts.len() >= 4, "the README's recipe has its blocks: {blocks:?}");
    assert_eq!(scripts[0].lines().next(), Some(BUILD), "the recipe starts with the build");

    // A clone's root: the binary where the build leaves it, the repository's
    // deploy/ and proto/ beside it.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("target/release")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_paymesh"), root.join("target/release/paymesh")).unwrap();
    for shared in ["deploy", "proto"] {
        std::os::unix::fs::symlink(repo.join(shared), root.join(shared)).unwrap();
    }
    let mut script = String::from("set -euo pipefail\n");
    for block in &blocks {
        match block {
            Block::Script(text) => {
                script.push_str(&text.replacen(BUILD, ": the test binary stands in for the release build", 1))
            }
            Block::File(name, content) => std::fs::write(root.join(name), content).unwrap(),
        }
    }

    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(root)
        .env_remove("RUST_LOG")
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let group = Group(child.id());
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > RECIPE_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The nodes still run: stop them, so the pipes they inherited close.
    drop(group);
    if status.is_none() {
        let _ = child.kill();
    }
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let logs: String = (1..=3)
        .map(|n| {
            let log = std::fs::read_to_string(root.join(format!("node{n}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            format!("--- node{n}.log (tail)\n{}\n", tail.join("\n"))
        })
        .collect();
    let said = format!("--- stdout\n{out}\n--- stderr\n{err}\n{logs}");
    let status = status.unwrap_or_else(|| panic!("the recipe did not finish within {RECIPE_TIMEOUT:?}\n{said}"));
    assert!(status.success(), "the recipe failed ({status})\n{said}");

    // The payment committed, the merchant network holds it, and the books
    // balance (the recipe's last command exits 1 otherwise).
    assert!(out.contains("\"state\": \"TRANSFER_STATE_COMMITTED\""), "{said}");
    assert!(out.contains("\"posted\": \"25.00\""), "the merchant network was credited\n{said}");
    assert!(out.contains("region initialised through"), "{said}");
    assert!(out.contains("3 voters in step"), "init waits for the members: {said}");
    assert!(!out.contains("replicas differ"), "status after init: {said}");
}
