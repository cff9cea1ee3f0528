//! Legacy schema1 images: fetched, verified and converted the way skopeo
//! converts them (issue #5).

use std::path::Path;

use crate::support::images::{self, Flavour};
use crate::support::registry::{Registry, RegistryOptions};
use crate::support::tools::{Podman, airlock, skopeo_copy};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn blob(dir: &Path, digest: &str) -> std::path::PathBuf {
    dir.join("blobs/sha256").join(&digest["sha256:".len()..])
}

/// A v2s2 image whose history has empty layers (in the middle and on
/// top), so that schema1's throwaway entries and their order matter.
fn push_with_empty_history(reg: &Registry) -> images::PushedImage {
    let kind = images::LayerKind::DockerGzip;
    let layers: Vec<images::Blob> = [3000, 40_000, 5000]
        .iter()
        .enumerate()
        .map(|(i, size)| images::random_layer(700 + i as u64, *size, kind))
        .collect();
    let platform = images::Platform::parse("linux/amd64");
    let base = images::config(Flavour::Docker, &platform, &layers, 71);
    let mut config: serde_json::Value = serde_json::from_slice(&base.bytes).unwrap();
    let empty = |what: &str| {
        serde_json::json!({
            "created": "1970-01-01T00:00:00Z",
            "created_by": format!("/bin/sh -c #(nop) {what}"),
            "empty_layer": true
        })
    };
    let history = config["history"].as_array_mut().unwrap();
    history.insert(1, empty("ENV STAGE=1"));
    history.push(empty("CMD [\"/bin/true\"]"));
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let desc = |media_type: &str, bytes: &[u8]| {
        serde_json::json!({
            "mediaType": media_type,
            "size": bytes.len(),
            "digest": crate::support::tools::sha256_digest(bytes),
        })
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": images::DOCKER_MANIFEST,
        "config": desc(images::DOCKER_CONFIG, &config_bytes),
        "layers": layers.iter().map(|l| desc(images::DOCKER_LAYER_GZIP, &l.bytes)).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    for l in &layers {
        images::push_blob(reg, "old/app", &l.bytes);
    }
    images::push_blob(reg, "old/app", &config_bytes);
    images::push_manifest(
        reg,
        "old/app",
        "v1",
        images::DOCKER_MANIFEST,
        &manifest_bytes,
    );
    let mut built = images::build_single(71, &[1], Flavour::Docker);
    built.layers = layers;
    images::PushedImage {
        host: reg.host(),
        repo: "old/app".into(),
        tag: "v1".into(),
        digest: crate::support::tools::sha256_digest(&manifest_bytes),
        media_type: images::DOCKER_MANIFEST.into(),
        bytes: manifest_bytes,
        index_digest: None,
        manifests: vec![built],
        total_blob_bytes: 0,
    }
}

/// A registry holding a three-layer image (with empty history entries) as
/// signed schema1, and the image as it was pushed (v2s2) to another.
fn legacy_image() -> (Registry, Registry, images::PushedImage) {
    let modern = Registry::start();
    let img = push_with_empty_history(&modern);
    let legacy = Registry::start_with(RegistryOptions {
        schema1: true,
        ..Default::default()
    });
    skopeo_copy(
        &img.docker_ref(),
        &format!("docker://{}/old/app:v1", legacy.host()),
        &["--format", "v2s1"],
    );
    // The throwaway entries are there: more history than layers.
    let (bytes, _, _) = images::get_manifest(&legacy, "old/app", "v1");
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["fsLayers"].as_array().unwrap().len(), 5, "{doc}");
    (modern, legacy, img)
}

/// The (config, layers) of the one image a layout's first entry names.
fn image_of(dir: &Path) -> (serde_json::Value, String, Vec<String>) {
    let index = json(&dir.join("index.json"));
    let manifest = json(&blob(
        dir,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ));
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let config = json(&blob(dir, &config_digest));
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (config, config_digest, layers)
}

#[test]
fn converts_to_oci_exactly_as_skopeo_does() {
    let (_modern, legacy, img) = legacy_image();
    let reference = format!("{}/old/app:v1", legacy.host());
    let (_, _, schema1_digest) = images::get_manifest(&legacy, "old/app", "v1");
    let work = tempfile::tempdir().unwrap();
    let ours = work.path().join("ours");
    let theirs = work.path().join("theirs");

    let a = airlock()
        .args(["export", "--plain-http", "-o"])
        .arg(&ours)
        .arg(&reference)
        .assert()
        .success();
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(
        err.contains("converted schema1") && err.contains(&schema1_digest),
        "{err}"
    );
    skopeo_copy(
        &format!("docker://{reference}"),
        &format!("oci:{}:x", theirs.display()),
        &[],
    );

    let (our_config, our_digest, our_layers) = image_of(&ours);
    let (their_config, their_digest, their_layers) = image_of(&theirs);
    // Layer blobs are untouched; diff_ids and the whole config agree.
    assert_eq!(our_layers, their_layers);
    let pushed: Vec<&str> = img.manifests[0]
        .layers
        .iter()
        .map(|l| l.digest.as_str())
        .collect();
    assert_eq!(our_layers, pushed);
    assert_eq!(our_config["rootfs"], their_config["rootfs"]);
    assert_eq!(our_config["history"], their_config["history"]);
    assert_eq!(
        our_digest, their_digest,
        "config bytes differ from skopeo's"
    );

    // The entry and the manifest both record the schema1 digest.
    let index = json(&ours.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["io.github.airlock.source-digest"],
        schema1_digest.as_str()
    );
    let manifest = json(&blob(&ours, entry["digest"].as_str().unwrap()));
    assert_eq!(
        manifest["annotations"]["io.github.airlock.schema1.digest"],
        schema1_digest.as_str()
    );

    // A re-run converts again to the same digests without fetching layers.
    let again = airlock()
        .args(["export", "--plain-http", "-o"])
        .arg(&ours)
        .arg(&reference)
        .assert()
        .success();
    let err = String::from_utf8_lossy(&again.get_output().stderr).to_string();
    assert!(err.contains("0 blobs fetched"), "{err}");
    assert_eq!(json(&ours.join("index.json")), index);
}

#[test]
fn docker_conversion_imports_and_pulls() {
    let (modern, legacy, img) = legacy_image();
    let reference = format!("{}/old/app:v1", legacy.host());
    let work = tempfile::tempdir().unwrap();
    let ours = work.path().join("ours");
    airlock()
        .args(["export", "--plain-http", "--schema1", "docker", "-o"])
        .arg(&ours)
        .arg(&reference)
        .assert()
        .success();
    let index = json(&ours.join("index.json"));
    assert_eq!(
        index["manifests"][0]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    // skopeo's own v2s2 conversion gives the same config.
    skopeo_copy(
        &format!("docker://{reference}"),
        &format!("docker://{}/skopeo/app:v1", modern.host()),
        &["--format", "v2s2"],
    );
    let (theirs, _, _) = images::get_manifest(&modern, "skopeo/app", "v1");
    let theirs: serde_json::Value = serde_json::from_slice(&theirs).unwrap();
    let (_, our_config, our_layers) = image_of(&ours);
    assert_eq!(theirs["config"]["digest"].as_str().unwrap(), our_config);
    let pushed: Vec<String> = img.manifests[0]
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .collect();
    assert_eq!(our_layers, pushed);

    let dst = Registry::start();
    airlock()
        .args(["import", "--plain-http"])
        .arg(&ours)
        .args(["--to", &dst.host()])
        .assert()
        .success();
    let podman = Podman::new();
    let id = podman.pull(&format!("{}/old/app:v1", dst.host()));
    assert_eq!(format!("sha256:{id}"), our_config);
}

#[test]
fn archive_export_converts_and_keep_stores_the_payload() {
    let (_modern, legacy, _img) = legacy_image();
    let reference = format!("{}/old/app:v1", legacy.host());
    let (_, _, schema1_digest) = images::get_manifest(&legacy, "old/app", "v1");
    let work = tempfile::tempdir().unwrap();

    // By digest: the payload digest the registry reports.
    let pinned = format!("{}/old/app@{schema1_digest}", legacy.host());
    airlock()
        .args(["export", "--plain-http", "--chunk-size", "64KiB", "-o"])
        .arg(work.path().join("old.tar"))
        .arg(&pinned)
        .assert()
        .success();
    airlock()
        .arg("verify")
        .arg(work.path().join("old"))
        .assert()
        .success();

    let kept = work.path().join("kept");
    airlock()
        .args(["export", "--plain-http", "--schema1", "keep", "-o"])
        .arg(&kept)
        .arg(&reference)
        .assert()
        .success();
    let entry = &json(&kept.join("index.json"))["manifests"][0];
    assert_eq!(entry["digest"], schema1_digest.as_str());
    assert_eq!(
        entry["mediaType"],
        "application/vnd.docker.distribution.manifest.v1+json"
    );
    let stored = json(&blob(&kept, &schema1_digest));
    assert!(stored.get("signatures").is_none());
    assert_eq!(stored["fsLayers"].as_array().unwrap().len(), 5);
}
