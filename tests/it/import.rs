//! `airlock import` from an OCI layout into a real registry (issue #3).

use std::path::Path;

use crate::export::export;
use crate::support::images::{self, ImageSeed, PushedImage};
use crate::support::registry::Registry;
use crate::support::tools::{Podman, airlock};

const PLATFORMS: &[&str] = &["linux/amd64", "linux/arm64"];
const LAYER: usize = 64 * 1024;

fn import(bundle: &Path, to: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
    airlock()
        .args(["import", "--plain-http"])
        .arg(bundle)
        .args(["--to", to])
        .args(extra)
        .assert()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}

/// The digest the target serves for `repo:tag`, if any.
fn served(reg: &Registry, repo: &str, tag: &str) -> Option<String> {
    images::try_get_manifest(reg, repo, tag).map(|m| m.docker_content_digest)
}

/// Three kinds of image in one registry, exported into one layout.
fn exported_set(src: &Registry, dir: &Path) -> Vec<PushedImage> {
    let set = vec![
        images::push_multiarch_oci(
            src,
            "team/app",
            "1.2",
            ImageSeed { base: 3, app: 1 },
            PLATFORMS,
            LAYER,
        ),
        images::push_docker_list(
            src,
            "team/legacy",
            "v2",
            ImageSeed { base: 4, app: 2 },
            PLATFORMS,
            LAYER,
        ),
        images::push_zstd_image(src, "team/zstd", "v3", 5, LAYER),
        images::push_multiarch_oci(
            src,
            "other/app",
            "1.2",
            ImageSeed { base: 3, app: 6 },
            PLATFORMS,
            LAYER,
        ),
    ];
    let refs: Vec<String> = set.iter().map(|i| i.reference()).collect();
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    export(dir, &refs).success();
    set
}

#[test]
fn round_trip_preserves_every_digest_and_podman_pulls_it() {
    let src = Registry::start();
    let dst = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let set = exported_set(&src, dir.path());

    let a = import(dir.path(), &format!("{}/offline", dst.host()), &[]).success();
    let err = stderr(&a);
    assert!(err.contains("imported 4 images"), "{err}");
    // other/app shares team/app's base layers: mounted, not sent again.
    assert!(!err.contains(" 0 mounted"), "{err}");

    for img in &set {
        let repo = format!("offline/{}", img.repo);
        assert_eq!(
            served(&dst, &repo, &img.tag).as_deref(),
            Some(img.digest.as_str()),
            "{repo}"
        );
        for m in &img.manifests {
            for l in &m.layers {
                assert!(
                    images::blob_exists(&dst, &repo, &l.digest),
                    "{repo} {}",
                    l.digest
                );
            }
        }
    }
    let podman = Podman::new();
    podman.pull(&format!("{}/offline/team/zstd:v3", dst.host()));
    podman.pull(&format!("{}/offline/team/legacy:v2", dst.host()));

    // A re-run into the up-to-date registry sends no blob bytes.
    let again = import(dir.path(), &format!("{}/offline", dst.host()), &[]).success();
    assert!(
        stderr(&again).contains("0 blobs uploaded (0 B)"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_corrupt_layer_refuses_its_image_and_pushes_no_manifest_for_it() {
    let src = Registry::start();
    let dst = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let set = exported_set(&src, dir.path());

    // Flip one byte of the zstd image's first layer.
    let victim = &set[2].manifests[0].layers[0].digest;
    let path = dir
        .path()
        .join("blobs/sha256")
        .join(&victim["sha256:".len()..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let a = import(dir.path(), &dst.host(), &[]).code(1);
    let err = stderr(&a);
    assert!(
        err.contains(victim.as_str()) && err.contains(path.to_str().unwrap()),
        "{err}"
    );
    assert!(err.contains("team/zstd:v3"), "{err}");
    assert_eq!(served(&dst, "team/zstd", "v3"), None);
    assert!(!images::blob_exists(&dst, "team/zstd", victim));
    // The others arrived whole.
    for img in [&set[0], &set[1], &set[3]] {
        assert_eq!(
            served(&dst, &img.repo, &img.tag).as_deref(),
            Some(img.digest.as_str())
        );
    }
}

#[test]
fn a_missing_blob_file_is_named_before_anything_is_pushed() {
    let src = Registry::start();
    let dst = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = images::push_multiarch_oci(&src, "team/gone", "1", 8, PLATFORMS, LAYER);
    export(dir.path(), &[&img.reference()]).success();
    let layer = &img.manifests[1].layers[1].digest;
    let path = dir
        .path()
        .join("blobs/sha256")
        .join(&layer["sha256:".len()..]);
    std::fs::remove_file(&path).unwrap();

    let a = import(dir.path(), &dst.host(), &[]).code(1);
    let err = stderr(&a);
    assert!(
        err.contains(layer.as_str()) && err.contains("missing"),
        "{err}"
    );
    assert!(
        images::catalog(&dst).is_empty(),
        "{:?}",
        images::catalog(&dst)
    );
}

#[test]
fn dry_run_pushes_nothing_and_image_filter_selects() {
    let src = Registry::start();
    let dst = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let set = exported_set(&src, dir.path());

    let a = import(dir.path(), &dst.host(), &["--dry-run"]).success();
    assert!(
        stderr(&a).contains("would import 4 images"),
        "{}",
        stderr(&a)
    );
    assert!(images::catalog(&dst).is_empty());

    let only = set[1].reference();
    import(
        dir.path(),
        &format!("{}/one", dst.host()),
        &["--image", &only],
    )
    .success();
    assert_eq!(images::catalog(&dst), vec!["one/team/legacy".to_string()]);
    let a = import(dir.path(), &dst.host(), &["--image", "nowhere/none:1"]).code(1);
    assert!(stderr(&a).contains("nowhere/none:1"), "{}", stderr(&a));
}

#[test]
fn digest_only_references_are_pushed_by_digest() {
    let src = Registry::start();
    let dst = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = images::push_single(&src, "team/pinned", "x", 9, &[LAYER], images::Flavour::Oci);
    export(
        dir.path(),
        &[&format!("{}/team/pinned@{}", src.host(), img.digest)],
    )
    .success();

    import(dir.path(), &dst.host(), &[]).success();
    assert_eq!(
        served(&dst, "team/pinned", &img.digest).as_deref(),
        Some(img.digest.as_str())
    );
    assert!(images::list_tags(&dst, "team/pinned").is_empty());
}

#[test]
fn registry_lost_mid_import_then_a_rerun_finishes() {
    let src = Registry::start();
    let mut dst = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = images::push_multiarch_oci(&src, "big/app", "v1", 12, PLATFORMS, 8 << 20);
    export(dir.path(), &[&img.reference()]).success();

    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("airlock"))
        .args(["import", "--plain-http", "-q", "-j", "1", "--retries", "1"])
        .arg(dir.path())
        .args(["--to", &dst.host()])
        .env("AIRLOCK_RETRY_BASE_MS", "10")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    dst.stop();
    let out = child.wait_with_output().unwrap();
    dst.restart();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("big/app:v1"), "{err}");
        assert_eq!(
            served(&dst, "big/app", "v1"),
            None,
            "tag visible before its image is whole"
        );
    }

    import(dir.path(), &dst.host(), &[]).success();
    assert_eq!(
        served(&dst, "big/app", "v1").as_deref(),
        Some(img.digest.as_str())
    );
}

#[test]
fn bad_bundles_name_the_file() {
    let dst = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let none = import(dir.path(), &dst.host(), &[]).code(1);
    assert!(stderr(&none).contains("oci-layout"), "{}", stderr(&none));

    std::fs::write(
        dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let a = import(dir.path(), &dst.host(), &[]).code(1);
    assert!(stderr(&a).contains("index.json"), "{}", stderr(&a));

    std::fs::write(
        dir.path().join("index.json"),
        r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../etc/passwd","size":1}]}"#,
    )
    .unwrap();
    let a = import(dir.path(), &dst.host(), &[]).code(1);
    let err = stderr(&a);
    assert!(
        err.contains("index.json") && err.contains("invalid digest"),
        "{err}"
    );

    std::fs::write(dir.path().join("oci-layout"), "{not json").unwrap();
    let a = import(dir.path(), &dst.host(), &[]).code(1);
    assert!(stderr(&a).contains("oci-layout"), "{}", stderr(&a));
}
