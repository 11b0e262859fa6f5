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
