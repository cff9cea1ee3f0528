//! `airlock export` into an OCI layout, against real registries, read back
//! with skopeo, umoci and oci-image-tool (issue #2).

use std::path::Path;

use crate::support::images::{self, ImageSeed};
use crate::support::layout::check_oci_layout;
use crate::support::registry::Registry;
use crate::support::tools::{Podman, airlock, skopeo_inspect_raw, umoci_ls};

const PLATFORMS: &[&str] = &["linux/amd64", "linux/arm64", "linux/arm/v7"];
const LAYER: usize = 64 * 1024;

/// Runs `airlock export --plain-http -o DIR ARGS...` and returns it.
pub fn export(dir: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    airlock()
        .args(["export", "--plain-http", "-o"])
        .arg(dir)
        .args(args)
        .assert()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}

pub fn index_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
}

#[test]
fn multiarch_index_is_stored_byte_identical_and_readable_by_others() {
    let reg = Registry::start();
    let img = images::push_multiarch_oci(&reg, "team/app", "1.2", 11, PLATFORMS, LAYER);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("bundle");

    export(&dir, &[&img.reference()]).success();

    let report = check_oci_layout(&dir);
    let name = format!("{}/team/app:1.2", reg.host());
    assert_eq!(report.refs[&name], img.digest);
    assert!(
        report.unreferenced().is_empty(),
        "{:?}",
        report.unreferenced()
    );
    for d in img
        .blob_digests()
        .iter()
        .chain(img.all_manifest_digests().iter())
    {
        assert!(report.blobs.contains_key(d), "missing {d}");
    }
    let entry = &index_json(&dir)["manifests"][0];
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        name.as_str()
    );

    // skopeo reads the exact bytes the registry served, under the full name.
    let raw = skopeo_inspect_raw(&format!("oci:{}:{name}", dir.display()));
    assert_eq!(raw, img.bytes);
    assert_eq!(umoci_ls(&dir), vec![name]);
}

#[test]
fn docker_list_and_zstd_images_keep_their_digests() {
    let reg = Registry::start();
    let list = images::push_docker_list(&reg, "legacy/list", "v1", 21, PLATFORMS, LAYER);
    let zstd = images::push_zstd_image(&reg, "modern/zstd", "v1", 22, LAYER);
    // podman names an image from an oci: directory after its path, which
    // must then be a valid lower-case name: no random letters in it.
    let work = tempfile::Builder::new()
        .prefix(&format!("airlock-zstd-{}", std::process::id()))
        .rand_bytes(0)
        .tempdir()
        .unwrap();
    let dir = work.path().join("bundle");

    let a = export(&dir, &[&list.reference(), &zstd.reference()]).success();
    assert!(stderr(&a).contains("exported 2 images"), "{}", stderr(&a));

    let report = check_oci_layout(&dir);
    assert_eq!(report.refs[&list.reference()], list.digest);
    assert_eq!(report.refs[&zstd.reference()], zstd.digest);
    let index = index_json(&dir);
    let types: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mediaType"].as_str().unwrap())
        .collect();
    assert!(types.contains(&images::DOCKER_LIST), "{types:?}");
    for d in list.blob_digests().iter().chain(zstd.blob_digests().iter()) {
        assert!(report.blobs.contains_key(d), "missing {d}");
    }
    // A zstd image from the layout pulls with podman, digest unchanged.
    let podman = Podman::new();
    podman.run(&[
        "pull",
        "--quiet",
        &format!("oci:{}:{}", dir.display(), zstd.reference()),
    ]);
}

#[test]
fn platform_filter_writes_a_new_index_and_names_both_digests() {
    let reg = Registry::start();
    let img = images::push_multiarch_oci(&reg, "team/multi", "v1", 31, PLATFORMS, LAYER);
    let dir = tempfile::tempdir().unwrap();

    let a = export(
        dir.path(),
        &["--platform", "linux/arm/v7,linux/arm64", &img.reference()],
    )
    .success();
    let err = stderr(&a);

    let report = check_oci_layout(dir.path());
    let new_digest = report.refs[&img.reference()].clone();
    assert_ne!(new_digest, img.digest);
    assert!(
        err.contains(&img.digest) && err.contains(&new_digest),
        "{err}"
    );
    let entry = &index_json(dir.path())["manifests"][0];
    assert_eq!(
        entry["annotations"]["io.github.airlock.source-digest"],
        img.digest.as_str()
    );
    // Only the chosen children are present, each byte-identical.
    let amd64 = img.manifest("linux/amd64");
    assert!(!report.reachable.contains_key(&amd64.digest));
    assert!(!report.blobs.contains_key(&amd64.layers[1].digest));
    for p in ["linux/arm64", "linux/arm/v7"] {
        assert!(
            report.reachable.contains_key(&img.manifest(p).digest),
            "{p}"
        );
    }
}

#[test]
fn variants_are_told_apart_and_a_missing_platform_is_named() {
    let reg = Registry::start();
    let img = images::push_multiarch_oci(&reg, "team/arm", "v1", 41, PLATFORMS, LAYER);
    let dir = tempfile::tempdir().unwrap();

    let a = export(
        dir.path(),
        &["--platform", "linux/arm/v6", &img.reference()],
    )
    .code(1);
    let err = stderr(&a);
    assert!(
        err.contains("linux/arm/v6") && err.contains("linux/arm/v7"),
        "{err}"
    );
    assert!(err.contains(&img.reference()), "{err}");
    // A new bundle that nothing came of is not left behind.
    assert!(!dir.path().join("oci-layout").exists());
}

#[test]
fn list_file_shared_layers_annotations_and_reruns() {
    let reg = Registry::start();
    let a = images::push_multiarch_oci(
        &reg,
        "suite/a",
        "1",
        ImageSeed { base: 5, app: 1 },
        PLATFORMS,
        LAYER,
    );
    let b = images::push_multiarch_oci(
        &reg,
        "suite/b",
        "1",
        ImageSeed { base: 5, app: 2 },
        PLATFORMS,
        LAYER,
    );
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("images.txt");
    std::fs::write(
        &list,
        format!(
            "# the suite\n{}\n\n{}  # second\n",
            a.reference(),
            b.reference()
        ),
    )
    .unwrap();
    let dir = work.path().join("bundle");

    let first = export(
        &dir,
        &["-f", list.to_str().unwrap(), "--annotation", "site=north"],
    )
    .success();
    assert!(
        stderr(&first).contains("exported 2 images"),
        "{}",
        stderr(&first)
    );
    let report = check_oci_layout(&dir);
    // Shared base layers are stored once.
    let unique: std::collections::BTreeSet<_> =
        a.blob_digests().union(&b.blob_digests()).cloned().collect();
    let blob_files = report.blobs.len()
        - report
            .reachable
            .values()
            .filter(|(t, _)| t.contains("manifest") || t.contains("index"))
            .count();
    assert_eq!(blob_files, unique.len());
    let index = index_json(&dir);
    for entry in index["manifests"].as_array().unwrap() {
        assert_eq!(entry["annotations"]["site"], "north");
    }

    // A re-run fetches no blob; a changed tag is updated in place.
    let again = export(&dir, &["-f", list.to_str().unwrap()]).success();
    assert!(
        stderr(&again).contains("0 blobs fetched"),
        "{}",
        stderr(&again)
    );
    let a2 = images::push_multiarch_oci(
        &reg,
        "suite/a",
        "1",
        ImageSeed { base: 5, app: 9 },
        PLATFORMS,
        LAYER,
    );
    let c = images::push_single(&reg, "suite/c", "1", 77, &[LAYER], images::Flavour::Docker);
    export(&dir, &[&a2.reference(), &c.reference()]).success();
    let report = check_oci_layout(&dir);
    assert_eq!(report.refs.len(), 3);
    assert_eq!(report.refs[&a.reference()], a2.digest);
    assert_eq!(report.refs[&b.reference()], b.digest);
    assert_eq!(report.refs[&c.reference()], c.digest);
}

#[test]
fn digest_references_and_unknown_images() {
    let reg = Registry::start();
    let img = images::push_multiarch_oci(&reg, "team/pinned", "v1", 51, &["linux/amd64"], LAYER);
    let dir = tempfile::tempdir().unwrap();
    let by_digest = format!("{}/team/pinned@{}", reg.host(), img.digest);
    let tag_and_digest = format!("{}/team/pinned:named@{}", reg.host(), img.digest);
    let missing = format!("{}/team/nothing:here", reg.host());

    let a = export(dir.path(), &[&by_digest, &missing, &tag_and_digest]).code(1);
    let err = stderr(&a);
    assert!(err.contains(&missing) && err.contains("not found"), "{err}");
    assert!(err.contains("1 of 3 images"), "{err}");
    let report = check_oci_layout(dir.path());
    assert_eq!(report.refs[&by_digest], img.digest);
    // The digest wins; the tag names the image.
    assert_eq!(
        report.refs[&format!("{}/team/pinned:named", reg.host())],
        img.digest
    );
}

#[test]
fn usage_errors_exit_2_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("never");
    for args in [
        vec!["Not A Reference!"],
        vec!["--platform", "linux", "host/app:1"],
        vec!["--annotation", "novalue", "host/app:1"],
        vec!["host/app@sha256:../../etc/passwd"],
        vec![],
    ] {
        let a = export(&target, &args).code(2);
        assert!(!stderr(&a).is_empty());
        assert!(!target.exists(), "{args:?} created the bundle");
    }
}

#[test]
fn interrupted_export_leaves_a_valid_layout_and_a_rerun_completes() {
    let reg = Registry::start();
    let img = images::push_multiarch_oci(&reg, "big/app", "v1", 61, PLATFORMS, 6 << 20);
    let dir = tempfile::tempdir().unwrap();

    for delay_ms in [150u64, 400] {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("airlock"))
            .args(["export", "--plain-http", "-q", "-j", "2", "-o"])
            .arg(dir.path())
            .arg(img.reference())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        if dir.path().join("oci-layout").exists() {
            // Whatever the moment, what the layout holds is whole.
            check_oci_layout(dir.path());
        }
    }
    export(dir.path(), &[&img.reference()]).success();
    let report = check_oci_layout(dir.path());
    assert_eq!(report.refs[&img.reference()], img.digest);
    assert!(!dir.path().join(".airlock").exists());
}
