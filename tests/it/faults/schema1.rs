//! Unsigned and malformed schema1 manifests, served by the fault proxy
//! (issue #5): converted like skopeo where valid, refused by name where not.

use super::{Work, failed_cleanly};
use crate::support::faulty::{Fault, Faulty, Match};
use crate::support::images;
use crate::support::registry::Registry;
use crate::support::tools::sha256_digest;

const UNSIGNED: &str = include_str!("../../data/schema1/edge.json");
const SIGNED: &str = include_str!("../../data/schema1/registry-get1.json");
const SKOPEO_OCI_CONFIG: &[u8] = include_bytes!("../../data/schema1/edge.skopeo-oci-config.json");
const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// A registry holding the fixture's layer blobs, behind a proxy that
/// serves `body` as the manifest of `legacy/app:v1`.
fn serving(body: &str, media_type: &str) -> (Registry, Faulty) {
    let reg = Registry::start();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/schema1");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("layer-")
        {
            images::push_blob(&reg, "legacy/app", &std::fs::read(&path).unwrap());
        }
    }
    let proxy = Faulty::start(&reg);
    // HEAD of the tag names the digest; the GET by digest must match too.
    let digest = sha256_digest(body.as_bytes());
    for reference in ["v1", digest.as_str()] {
        proxy.always(
            Match::manifest(reference),
            Fault::serve(body.to_string(), media_type),
        );
    }
    (reg, proxy)
}

#[test]
fn an_unsigned_schema1_manifest_converts_to_skopeos_config() {
    let (_reg, proxy) = serving(UNSIGNED, SCHEMA1);
    let work = Work::new();
    let reference = format!("{}/legacy/app:v1", proxy.host());
    work.export(&[&reference]).success();

    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.bundle().join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["io.github.airlock.source-digest"],
        sha256_digest(UNSIGNED.as_bytes()).as_str()
    );
    let blob = |d: &str| std::fs::read(work.bundle().join("blobs/sha256").join(&d[7..])).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(entry["digest"].as_str().unwrap())).unwrap();
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(
        config, SKOPEO_OCI_CONFIG,
        "config bytes differ from skopeo's"
    );
}

#[test]
fn broken_schema1_manifests_are_refused_by_name() {
    let doc: serde_json::Value = serde_json::from_str(UNSIGNED).unwrap();
    let mutate = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut d = doc.clone();
        f(&mut d);
        serde_json::to_string(&d).unwrap()
    };
    let short_history = mutate(&|d| {
        d["history"].as_array_mut().unwrap().pop();
    });
    let broken_chain = mutate(&|d| {
        let compat = d["history"][0]["v1Compatibility"]
            .as_str()
            .unwrap()
            .to_string();
        let mut v: serde_json::Value = serde_json::from_str(&compat).unwrap();
        v["parent"] = "f".repeat(64).into();
        d["history"][0]["v1Compatibility"] = serde_json::to_string(&v).unwrap().into();
    });
    let not_json = mutate(&|d| {
        d["history"][0]["v1Compatibility"] = "{this is not json".into();
    });
    let mut signed: serde_json::Value = serde_json::from_str(SIGNED).unwrap();
    signed["signatures"][0]["protected"] = "!!not base64!!".into();
    let bad_header = serde_json::to_string_pretty(&signed).unwrap();

    for (name, body, media_type, words) in [
        ("short history", short_history, SCHEMA1, "history"),
        ("broken chain", broken_chain, SCHEMA1, "parent"),
        ("not json", not_json, SCHEMA1, "v1Compatibility"),
        (
            "bad signature header",
            bad_header,
            SCHEMA1_SIGNED,
            "protected",
        ),
    ] {
        let (_reg, proxy) = serving(&body, media_type);
        let work = Work::new();
        let reference = format!("{}/legacy/app:v1", proxy.host());
        let err = failed_cleanly(work.export(&[&reference]));
        let line = err
            .lines()
            .find(|l| l.contains(&reference))
            .unwrap_or_else(|| panic!("{name}: no line names the image:\n{err}"));
        assert!(
            line.contains(words) || line.contains("header"),
            "{name}: {line}"
        );
        assert!(
            !work.bundle().join("oci-layout").exists(),
            "{name}: left a bundle"
        );
    }
}
