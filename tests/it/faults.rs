//! airlock against registries that misbehave, through the fault-injecting
//! proxy of `support::faulty`.
//!
//! Every test runs the real binary and checks both the outcome (exit code,
//! the layout or the target registry, byte for byte) and the conversation
//! (the proxy's log: which requests were repeated, how often, how long
//! apart, with which headers), so a retry that silently stopped happening
//! or a resume that restarted from zero fails here.

mod auth;
mod download;
mod manifests;
mod schema1;
mod upload;

use std::path::{Path, PathBuf};

use assert_cmd::assert::Assert;
use tempfile::TempDir;

use crate::support::images::PushedImage;
use crate::support::layout::check_oci_layout;
use crate::support::tools::airlock;

/// Blob size of the test images: big enough to be cut in the middle,
/// small enough to keep each test well under a second of transfer.
const LAYER: usize = 32 * 1024;

/// A test's private directory: an empty HOME, and `out/` for the bundle.
pub struct Work {
    dir: TempDir,
}

impl Work {
    pub fn new() -> Work {
        let dir = tempfile::Builder::new()
            .prefix("airlock-faults-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        Work { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Where exports write: `out/bundle`, so that anything written beside
    /// it (outside the bundle) shows up in `out/`.
    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("out/bundle")
    }

    /// The binary with short retry backoff, no RUST_LOG, and HOME pointed
    /// at an empty directory so that the machine's own registry
    /// credentials are never read.
    pub fn airlock(&self) -> assert_cmd::Command {
        let mut cmd = airlock();
        cmd.env("AIRLOCK_RETRY_BASE_MS", "10")
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.home().join(".config"))
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("RUST_LOG");
        cmd
    }

    /// `airlock export --plain-http -o BUNDLE ARGS...`
    pub fn export(&self, args: &[&str]) -> Assert {
        self.airlock()
            .args(["export", "--plain-http", "-o"])
            .arg(self.bundle())
            .args(args)
            .assert()
    }
}

pub fn stderr(a: &Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}

pub fn stdout(a: &Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).to_string()
}

/// Asserts the run failed with exit code 1 and an error, not a crash.
pub fn failed_cleanly(a: Assert) -> String {
    let a = a.code(1);
    let err = stderr(&a);
    assert!(!err.contains("panicked"), "airlock panicked:\n{err}");
    err
}

/// Every file under `dir`, as paths relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The blob file of `digest` in a layout.
pub fn blob_file(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(&digest["sha256:".len()..])
}

/// Asserts the layout is whole (independently checked) and holds `image`
/// under `name` with every manifest and blob the source registry has.
pub fn assert_exported(layout: &Path, name: &str, image: &PushedImage) {
    let report = check_oci_layout(layout);
    assert_eq!(
        report.refs.get(name),
        Some(&image.digest),
        "{:?}",
        report.refs
    );
    for d in image
        .blob_digests()
        .iter()
        .chain(image.all_manifest_digests().iter())
    {
        assert!(report.blobs.contains_key(d), "{name}: {d} missing");
    }
    assert!(!layout.join(".airlock").exists(), "work area left behind");
}

/// Asserts a layout holds its own two files and blobs only: no partial
/// download, no work area. Every blob hashes to its name (checked by
/// `check_oci_layout`, which callers run too).
pub fn assert_only_whole_blobs(layout: &Path) {
    for f in files_under(layout) {
        let ours = f == "oci-layout" || f == "index.json" || f.starts_with("blobs/sha256/");
        assert!(ours, "{}: unexpected file {f}", layout.display());
    }
    crate::support::layout::oci_layout_blobs(layout);
}
