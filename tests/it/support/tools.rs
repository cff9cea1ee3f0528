//! The binary under test, third-party reference tools (skopeo, umoci,
//! oci-image-tool, podman) and hashing helpers.
//!
//! The reference tools act as independent witnesses: if airlock writes a
//! layout that umoci and oci-image-tool accept, or pushes an image podman can
//! pull, that means more than airlock agreeing with itself.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// A command for the `airlock` binary built by this package.
pub fn airlock() -> assert_cmd::Command {
    assert_cmd::cargo::cargo_bin_cmd!("airlock")
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>` of `bytes`, the form used in descriptors.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Lowercase hex SHA-256 of a file's contents, read in chunks.
pub fn sha256_file(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// Runs `cmd` and returns its output, panicking with the command line and
/// its stderr if it fails or cannot start.
pub fn run(cmd: &mut Command) -> Output {
    let out = try_run(cmd);
    if !out.status.success() {
        panic!(
            "command failed ({}): {:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs `cmd` and returns its output whatever the exit status; panics only
/// if the program cannot be started.
pub fn try_run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn skopeo_cmd<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new("skopeo");
    // Tests never install a signature policy; without this skopeo refuses
    // every copy on machines lacking /etc/containers/policy.json.
    cmd.arg("--insecure-policy").args(args);
    cmd
}

/// Runs `skopeo --insecure-policy ARGS...`, panicking on failure.
pub fn skopeo<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run(&mut skopeo_cmd(args))
}

/// Like [`skopeo`], but returns a failed run instead of panicking.
pub fn skopeo_try<S: AsRef<OsStr>>(args: &[S]) -> Output {
    try_run(&mut skopeo_cmd(args))
}

/// The raw manifest (or index) bytes that skopeo sees at `transport_ref`,
/// e.g. `docker://127.0.0.1:5000/repo:tag` or `oci:/tmp/layout:tag`.
/// TLS verification is off, which only matters for `docker://`.
pub fn skopeo_inspect_raw(transport_ref: &str) -> Vec<u8> {
    skopeo(&["inspect", "--raw", "--tls-verify=false", transport_ref]).stdout
}

/// `skopeo copy` from `src` to `dst` with TLS verification off on both
/// sides; `extra` goes before the references (e.g. `--all`).
pub fn skopeo_copy(src: &str, dst: &str, extra: &[&str]) -> Output {
    let mut args = vec!["copy", "--src-tls-verify=false", "--dest-tls-verify=false"];
    args.extend_from_slice(extra);
    args.extend([src, dst]);
    skopeo(&args)
}

/// Tags in an OCI layout, as `umoci ls` reports them, sorted.
pub fn umoci_ls(layout: impl AsRef<Path>) -> Vec<String> {
    let out = run(Command::new("umoci")
        .arg("ls")
        .arg("--layout")
        .arg(layout.as_ref()));
    let mut tags: Vec<String> = String::from_utf8(out.stdout)
        .expect("umoci ls output is UTF-8")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    tags.sort();
    tags
}

/// Unpacks `layout:tag` into a runtime bundle at `bundle` (which must not
/// exist yet). Only for tags that point at a single manifest: for an index
/// with several manifests umoci 0.4.7 fails with "tag is ambiguous".
pub fn umoci_unpack(layout: impl AsRef<Path>, tag: &str, bundle: impl AsRef<Path>) {
    let image = format!("{}:{tag}", layout.as_ref().display());
    // --rootless skips chown/mknod, so the result does not depend on
    // whether the tests happen to run as root.
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &image])
        .arg(bundle.as_ref()));
}

/// `oci-image-tool validate --type image DIR` over every ref in the layout,
/// panicking with its output if the layout is invalid.
///
/// Weak on its own: it skips refs that point at an index (with a warning)
/// and rejects zstd layers. Prefer `layout::check_oci_layout`.
///
/// `--type imageLayout` is documented but "unimplemented" in the packaged
/// version; `image` autodetects a layout directory and checks it.
pub fn oci_image_tool_validate(layout: impl AsRef<Path>) {
    let out = run(Command::new("oci-image-tool")
        .args(["validate", "--type", "image"])
        .arg(layout.as_ref()));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // Require its success line too, not just exit status 0, in case a
    // version exits 0 after validating nothing.
    assert!(
        text.to_lowercase().contains("validation succeeded"),
        "oci-image-tool did not report success:\n{text}"
    );
}

/// A podman with private storage in temp dirs, so tests neither see nor
/// touch the machine's images and can run in parallel.
pub struct Podman {
    dir: TempDir,
}

impl Podman {
    /// Creates empty storage; nothing runs until a command is issued.
    pub fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("airlock-podman-")
            .tempdir()
            .expect("create podman temp dir");
        Podman { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `podman` with the isolation flags set; add a subcommand and run it.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.path("root"))
            .arg("--runroot")
            .arg(self.path("runroot"))
            // Without --tmpdir, podman keeps its lock and alive files in the
            // shared /run/libpod, which couples otherwise separate instances.
            .arg("--tmpdir")
            .arg(self.path("tmp"))
            // vfs needs no kernel overlay support or fuse; as root it just
            // copies layers, which is fine for small test images.
            .args(["--storage-driver", "vfs"])
            .args(["--events-backend", "none"])
            .args(["--cgroup-manager", "cgroupfs"]);
        cmd
    }

    /// Runs `podman <flags> ARGS...`, panicking on failure.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        run(self.command().args(args))
    }

    /// Pulls `reference` (`HOST/REPO:TAG` or `...@DIGEST`, no transport)
    /// over plain HTTP and returns the image id.
    pub fn pull(&self, reference: &str) -> String {
        let out = self.run(&["pull", "--quiet", "--tls-verify=false", reference]);
        String::from_utf8(out.stdout)
            .expect("podman output is UTF-8")
            .trim()
            .to_string()
    }

    /// The manifest digest podman recorded for a pulled image.
    pub fn image_digest(&self, reference: &str) -> String {
        let out = self.run(&["image", "inspect", "--format", "{{.Digest}}", reference]);
        String::from_utf8(out.stdout)
            .expect("podman output is UTF-8")
            .trim()
            .to_string()
    }

    /// `REPO:TAG` names of all images in this podman's storage, sorted.
    pub fn image_names(&self) -> Vec<String> {
        let out = self.run(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        let mut names: Vec<String> = String::from_utf8(out.stdout)
            .expect("podman output is UTF-8")
            .lines()
            .map(String::from)
            .collect();
        names.sort();
        names
    }
}

impl Default for Podman {
    fn default() -> Podman {
        Podman::new()
    }
}
