//! A file written under a temporary name made durable under its final one.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Why [`replace`] failed: the file or directory, and the error.
#[derive(Debug)]
pub struct ReplaceError {
    /// The file synced or renamed, or the directory synced.
    pub path: PathBuf,
    /// Whether it was the directory.
    pub dir: bool,
    /// The error.
    pub source: io::Error,
}

/// Make `file`, written at `tmp`, durable as `path`: synced through its
/// descriptor, renamed over `path`, then the directory synced, so that after
/// a crash `path` holds either what it held before or all of `file`.
pub fn replace(file: &File, tmp: &Path, path: &Path) -> Result<(), ReplaceError> {
    let failed = |path: &Path, dir: bool| {
        let path = path.to_owned();
        move |source| ReplaceError { path, dir, source }
    };
    file.sync_all().map_err(failed(tmp, false))?;
    fs::rename(tmp, path).map_err(failed(path, false))?;
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(failed(dir, true))
}

/// Let the kernel drop the cached pages of `file` from byte `from` to
/// `to`: written once and seldom read again (what is read soon after it is
/// written is kept in memory by its writer, or lies after `to`). A page
/// not yet on disk is not dropped; the advice starts its writeback, and a
/// later call over it drops it (after a sync, every page in the range
/// goes). Each page dropped is free for the next write, where a file
/// that only grows would otherwise take a page never used before for every
/// 4 KiB written (on a virtual machine that hands free memory back to its
/// host, the dearest kind: measured in docs/BENCHMARKS.md). Advice only:
/// a kernel that does not take it changes nothing but memory use, so its
/// error is not the caller's.
pub fn drop_cached(file: &File, from: u64, to: u64) {
    let Some(len) = to.checked_sub(from).and_then(std::num::NonZeroU64::new) else { return };
    if let Err(error) = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed) {
        tracing::debug!(%error, from, to, "the kernel did not take advice to drop cached pages");
    }
}

/// The bytes of the file at `path` in the page cache, as util-linux's
/// `fincore` counts them (tests; the file must be on a disk's file system:
/// tmpfs keeps every page whatever it is advised).
#[cfg(test)]
pub(crate) fn cached_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(out.status.success(), "fincore failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("fincore's output is text");
    text.trim().parse().unwrap_or_else(|_| panic!("fincore answered {text:?}, not a byte count"))
}
