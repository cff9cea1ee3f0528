//! Bundles and runs that go wrong: killed imports, a full disk, crafted
//! parts and indexes (issue #6, the bundle side).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::images::{self, ImageSeed, PushedImage};
use crate::support::layout::check_oci_layout;
use crate::support::registry::Registry;
use crate::support::tools::airlock;

const PLATFORMS: &[&str] = &["linux/amd64", "linux/arm64"];

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).to_string()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}

/// Whether every blob and child manifest of a tagged image is in the
/// target; `None` when the tag is not there at all.
fn complete(dst: &Registry, img: &PushedImage) -> Option<bool> {
    images::try_get_manifest(dst, &img.repo, &img.tag)?;
    let whole = img.manifests.iter().all(|m| {
        images::try_get_manifest(dst, &img.repo, &m.digest).is_some()
            && m.layers
                .iter()
                .all(|l| images::blob_exists(dst, &img.repo, &l.digest))
            && images::blob_exists(dst, &img.repo, &m.config.digest)
    });
    Some(whole)
}

#[test]
fn killed_imports_never_show_an_incomplete_tag_and_a_rerun_completes() {
    let src = Registry::start();
    let dst = Registry::start();
    let set: Vec<PushedImage> = (0..3)
        .map(|i| {
            let seed = ImageSeed {
                base: 90,
                app: 91 + i,
            };
            images::push_multiarch_oci(&src, &format!("k/app{i}"), "1", seed, PLATFORMS, 3 << 20)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<String> = set.iter().map(|i| i.reference()).collect();
    airlock()
        .args(["export", "--plain-http", "-q", "-o"])
        .arg(dir.path())
        .args(&refs)
        .assert()
        .success();

    for delay in [40u64, 120, 250, 400] {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin!("airlock"))
            .args(["import", "--plain-http", "-q", "-j", "2"])
            .arg(dir.path())
            .args(["--to", &dst.host()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        for img in &set {
            assert_ne!(
                complete(&dst, img),
                Some(false),
                "{} tagged while incomplete",
                img.repo
            );
        }
    }
    airlock()
        .args(["import", "--plain-http", "-q"])
        .arg(dir.path())
        .args(["--to", &dst.host()])
        .assert()
        .success();
    for img in &set {
        assert_eq!(complete(&dst, img), Some(true));
        let served = images::try_get_manifest(&dst, &img.repo, &img.tag).unwrap();
        assert_eq!(served.docker_content_digest, img.digest);
    }
}

/// Mounts a tmpfs of `mib` MiB at `dir` (root only); false if not allowed.
fn mount_tmpfs(dir: &Path, mib: u32) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_a_rerun_with_room_completes() {
    let src = Registry::start();
    let img = images::push_multiarch_oci(&src, "full/app", "1", 95, PLATFORMS, 6 << 20);
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("disk");
    std::fs::create_dir(&mount).unwrap();
    assert!(
        mount_tmpfs(&mount, 8),
        "this test mounts a tmpfs and needs root (CI and the dev machines run as root)"
    );
    let _guard = Unmount(&mount);
    let bundle = mount.join("bundle");

    let a = airlock()
        .args(["export", "--plain-http", "-o"])
        .arg(&bundle)
        .arg(img.reference())
        .assert()
        .code(1);
    let err = stderr(&a);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(&bundle.display().to_string()), "{err}");
    // Whatever is in place is whole, and no partial file is left behind.
    if bundle.join("oci-layout").exists() {
        check_oci_layout(&bundle);
        let tmp = bundle.join(".airlock/tmp");
        let leftovers = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
        assert_eq!(leftovers, 0, "temporary files left in {}", tmp.display());
    }

    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(grown.success());
    airlock()
        .args(["export", "--plain-http", "-q", "-o"])
        .arg(&bundle)
        .arg(img.reference())
        .assert()
        .success();
    assert_eq!(check_oci_layout(&bundle).refs[&img.reference()], img.digest);
}

/// A two-part-or-more archive of one image, in `dir` as `site.*`.
fn archive(src: &Registry, dir: &Path) -> PushedImage {
    let img = images::push_multiarch_oci(src, "h/app", "1", 97, PLATFORMS, 100 * 1024);
    airlock()
        .args([
            "export",
            "--plain-http",
            "-q",
            "--chunk-size",
            "128KiB",
            "-o",
        ])
        .arg(dir.join("site.tar"))
        .arg(img.reference())
        .assert()
        .success();
    img
}

#[test]
fn a_crafted_part_with_links_is_refused_and_nothing_is_written_outside() {
    let src = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    archive(&src, dir.path());
    let part = dir.path().join("site.0002.tar");
    let original = std::fs::read(&part).unwrap();
    let victim = dir.path().join("outside-victim");

    // Keep the part's identity block, then a symlink and a traversing
    // member where the blob was.
    let mut crafted = original[..1024].to_vec();
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    builder
        .append_link(&mut h, "blobs/sha256/evil", victim.to_str().unwrap())
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(4);
    h.as_old_mut().name[..20].copy_from_slice(b"../../../../tmp/evil");
    h.set_cksum();
    builder.append(&h, &b"evil"[..]).unwrap();
    crafted.extend(builder.into_inner().unwrap());
    crafted.resize(original.len(), 0);
    std::fs::write(&part, crafted).unwrap();

    let a = airlock()
        .arg("verify")
        .arg(dir.path().join("site"))
        .assert()
        .code(1);
    let report = stdout(&a);
    assert!(
        report.contains("part 0002") && report.contains("unexpected member"),
        "{report}"
    );

    let dst = Registry::start();
    let a = airlock()
        .args(["import", "--plain-http"])
        .arg(dir.path().join("site"))
        .args(["--to", &dst.host()])
        .assert()
        .code(1);
    assert!(stderr(&a).contains("h/app:1"), "{}", stderr(&a));
    assert!(!victim.exists());
    assert!(images::try_get_manifest(&dst, "h/app", "1").is_none());
}

#[test]
fn swapped_parts_and_a_tampered_index_are_named() {
    let src = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    archive(&src, dir.path());
    let (p2, p3) = (
        dir.path().join("site.0002.tar"),
        dir.path().join("site.0003.tar"),
    );
    let tmp = dir.path().join("swap");
    std::fs::rename(&p2, &tmp).unwrap();
    std::fs::rename(&p3, &p2).unwrap();
    std::fs::rename(&tmp, &p3).unwrap();
    let a = airlock()
        .arg("verify")
        .arg(dir.path().join("site.0001.tar"))
        .assert()
        .code(1);
    let report = stdout(&a);
    assert!(
        report.contains("part 0002") && report.contains("is part 0003"),
        "{report}"
    );
    assert!(
        report.contains("part 0003") && report.contains("is part 0002"),
        "{report}"
    );
    std::fs::rename(&p2, &tmp).unwrap();
    std::fs::rename(&p3, &p2).unwrap();
    std::fs::rename(&tmp, &p3).unwrap();

    // An index whose offsets do not match the parts.
    let index_path = dir.path().join("site.index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let blobs = index["blobs"].as_array_mut().unwrap();
    let last = blobs.last_mut().unwrap();
    let offset = last["pieces"][0]["offset"].as_u64().unwrap();
    last["pieces"][0]["offset"] = (offset - 512).into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let a = airlock().arg("verify").arg(&index_path).assert().code(1);
    let report = stdout(&a);
    assert!(
        report.contains("not where the index puts") || report.contains("hashes to"),
        "{report}"
    );

    // A malformed index is an error naming the file.
    std::fs::write(&index_path, "{\"format\":\"airlock-archive\"").unwrap();
    let a = airlock().arg("verify").arg(&index_path).assert().code(1);
    assert!(stderr(&a).contains("site.index.json"), "{}", stderr(&a));
}

#[test]
fn layouts_of_the_wrong_version_or_with_bad_blobs_are_named() {
    let src = Registry::start();
    let img = images::push_single(&src, "v/app", "1", 98, &[20_000], images::Flavour::Oci);
    let dir = tempfile::tempdir().unwrap();
    airlock()
        .args(["export", "--plain-http", "-q", "-o"])
        .arg(dir.path())
        .arg(img.reference())
        .assert()
        .success();
    let layer = &img.manifests[0].layers[0].digest;
    let path = dir.path().join("blobs/sha256").join(&layer[7..]);
    std::fs::write(&path, b"not the layer").unwrap();
    let a = airlock().arg("verify").arg(dir.path()).assert().code(1);
    let report = stdout(&a);
    assert!(
        report.contains(layer.as_str()) && report.contains("v/app:1"),
        "{report}"
    );
    assert!(report.contains(path.to_str().unwrap()), "{report}");

    std::fs::write(
        dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"9.9.9"}"#,
    )
    .unwrap();
    let a = airlock().arg("verify").arg(dir.path()).assert().code(1);
    let err = stderr(&a);
    assert!(err.contains("oci-layout") && err.contains("9.9.9"), "{err}");
}
