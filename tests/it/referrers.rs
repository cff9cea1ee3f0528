//! Signatures, SBOMs and attestations travel with their images (issue #8).
//!
//! distribution 2.8 has no referrers API, so the tests attach artifacts the
//! way clients do for such registries: push the artifact manifest with a
//! `subject`, and list it in the fallback index under `sha256-<hex>`; plus a
//! cosign-style `sha256-<hex>.sig` tag.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::images::{self, PushedImage};
use crate::support::registry::Registry;
use crate::support::tools::{airlock, sha256_digest};

const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SPDX: &str = "application/spdx+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).to_string()
}

/// Pushes an artifact manifest referring to `subject`; returns its digest
/// and its descriptor as a referrers index lists it.
fn push_artifact(
    reg: &Registry,
    repo: &str,
    artifact_type: Option<&str>,
    payload: &[u8],
    subject: Option<(&str, &str, usize)>,
    tag: Option<&str>,
) -> (String, serde_json::Value) {
    let config = b"{}";
    images::push_blob(reg, repo, config);
    images::push_blob(reg, repo, payload);
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": images::OCI_MANIFEST,
        "config": {"mediaType": EMPTY, "digest": sha256_digest(config), "size": 2},
        "layers": [{
            "mediaType": "application/octet-stream",
            "digest": sha256_digest(payload),
            "size": payload.len(),
        }],
        "annotations": {"org.example.note": "made by the tests"},
    });
    if let Some(t) = artifact_type {
        manifest["artifactType"] = t.into();
    }
    if let Some((media_type, digest, size)) = subject {
        manifest["subject"] =
            serde_json::json!({"mediaType": media_type, "digest": digest, "size": size});
    }
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256_digest(&bytes);
    images::push_manifest(
        reg,
        repo,
        tag.unwrap_or(&digest),
        images::OCI_MANIFEST,
        &bytes,
    );
    let mut listed = serde_json::json!({
        "mediaType": images::OCI_MANIFEST,
        "digest": digest,
        "size": bytes.len(),
        "annotations": {"org.example.note": "made by the tests"},
    });
    if let Some(t) = artifact_type {
        listed["artifactType"] = t.into();
    }
    (digest, listed)
}

/// Writes the fallback referrers index of `subject`.
fn list_referrers(reg: &Registry, repo: &str, subject: &str, listed: Vec<serde_json::Value>) {
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": images::OCI_INDEX, "manifests": listed});
    let tag = subject.replace(':', "-");
    images::push_manifest(
        reg,
        repo,
        &tag,
        images::OCI_INDEX,
        &serde_json::to_vec(&index).unwrap(),
    );
}

/// The digests the fallback index of `subject` lists, if it exists.
fn listed(reg: &Registry, repo: &str, subject: &str) -> Option<BTreeSet<String>> {
    let m = images::try_get_manifest(reg, repo, &subject.replace(':', "-"))?;
    let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    Some(
        v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["digest"].as_str().unwrap().to_string())
            .collect(),
    )
}

struct Signed {
    img: PushedImage,
    /// (subject, referrers listed for it)
    listings: Vec<(String, BTreeSet<String>)>,
    cosign_tag: String,
    cosign_digest: String,
    sbom: String,
}

/// An index with a signature on it, an SBOM on its amd64 manifest, a
/// signature on the SBOM, and a cosign `.sig` tag.
fn signed_image(reg: &Registry) -> Signed {
    let repo = "signed/app";
    let img = images::push_multiarch_oci(
        reg,
        repo,
        "1",
        5,
        &["linux/amd64", "linux/arm64"],
        32 * 1024,
    );
    let index = (images::OCI_INDEX, img.digest.as_str(), img.bytes.len());
    let (sig, sig_listed) = push_artifact(
        reg,
        repo,
        Some(SIG),
        b"signature of the index",
        Some(index),
        None,
    );
    list_referrers(reg, repo, &img.digest, vec![sig_listed]);

    let child = img.manifest("linux/amd64");
    let child_subject = (
        images::OCI_MANIFEST,
        child.digest.as_str(),
        child.bytes.len(),
    );
    let (sbom, sbom_listed) = push_artifact(
        reg,
        repo,
        Some(SPDX),
        b"{\"spdxVersion\":\"SPDX-2.3\"}",
        Some(child_subject),
        None,
    );
    list_referrers(reg, repo, &child.digest, vec![sbom_listed.clone()]);

    let sbom_size = sbom_listed["size"].as_u64().unwrap() as usize;
    let (sbom_sig, sbom_sig_listed) = push_artifact(
        reg,
        repo,
        Some(SIG),
        b"signature of the sbom",
        Some((images::OCI_MANIFEST, &sbom, sbom_size)),
        None,
    );
    list_referrers(reg, repo, &sbom, vec![sbom_sig_listed]);

    let cosign_tag = format!("{}.sig", img.digest.replace(':', "-"));
    let (cosign_digest, _) = push_artifact(
        reg,
        repo,
        None,
        b"cosign simple signing",
        None,
        Some(&cosign_tag),
    );

    Signed {
        listings: vec![
            (img.digest.clone(), BTreeSet::from([sig])),
            (child.digest.clone(), BTreeSet::from([sbom.clone()])),
            (sbom.clone(), BTreeSet::from([sbom_sig])),
        ],
        img,
        cosign_tag,
        cosign_digest,
        sbom,
    }
}

fn export(out: &Path, extra: &[&str], image: &str) {
    airlock()
        .args(["export", "--plain-http", "-q", "-o"])
        .arg(out)
        .args(extra)
        .arg(image)
        .assert()
        .success();
}

fn import(bundle: &Path, to: &str) {
    airlock()
        .args(["import", "--plain-http", "-q"])
        .arg(bundle)
        .args(["--to", to])
        .assert()
        .success();
}

#[test]
fn referrers_cross_with_their_image_and_the_target_lists_the_same_set() {
    let src = Registry::start();
    let s = signed_image(&src);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    export(&layout, &[], &s.img.reference());

    let a = airlock().arg("inspect").arg(&layout).assert().success();
    let text = stdout(&a);
    assert!(text.contains("signed, SBOM"), "{text}");
    let a = airlock()
        .args(["inspect", "--json"])
        .arg(&layout)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_str(&stdout(&a)).unwrap();
    assert_eq!(v["images"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        v["images"][0]["referrers"].as_array().unwrap().len(),
        4,
        "{v}"
    );

    // Into an empty registry: the subject's digest, every listing, the tag.
    let dst = Registry::start();
    let repo = "signed/app";
    import(&layout, &dst.host());
    let got = images::try_get_manifest(&dst, repo, "1").unwrap();
    assert_eq!(got.docker_content_digest, s.img.digest);
    for (subject, want) in &s.listings {
        assert_eq!(
            listed(&dst, repo, subject).as_ref(),
            Some(want),
            "referrers of {subject}"
        );
    }
    let cosign = images::try_get_manifest(&dst, repo, &s.cosign_tag).unwrap();
    assert_eq!(cosign.docker_content_digest, s.cosign_digest);

    // The same through a chunked archive.
    let dst2 = Registry::start();
    let archive = work.path().join("a.tar");
    export(&archive, &["--chunk-size", "64KiB"], &s.img.reference());
    airlock()
        .arg("verify")
        .arg(work.path().join("a"))
        .assert()
        .success();
    import(&work.path().join("a"), &dst2.host());
    for (subject, want) in &s.listings {
        assert_eq!(
            listed(&dst2, repo, subject).as_ref(),
            Some(want),
            "referrers of {subject}"
        );
    }
}

#[test]
fn an_existing_fallback_index_is_merged_not_replaced() {
    let src = Registry::start();
    let s = signed_image(&src);
    let dst = Registry::start();
    let repo = "signed/app";
    // The target already knows another signature of the same index.
    let index = (images::OCI_INDEX, s.img.digest.as_str(), s.img.bytes.len());
    let (theirs, theirs_listed) =
        push_artifact(&dst, repo, Some(SIG), b"someone else's", Some(index), None);
    list_referrers(&dst, repo, &s.img.digest, vec![theirs_listed]);

    let work = tempfile::tempdir().unwrap();
    export(work.path(), &[], &s.img.reference());
    import(work.path(), &dst.host());

    let mut want = s.listings[0].1.clone();
    want.insert(theirs);
    assert_eq!(listed(&dst, repo, &s.img.digest), Some(want));
}

#[test]
fn referrers_can_be_left_out_or_chosen_by_type() {
    let src = Registry::start();
    let s = signed_image(&src);
    let work = tempfile::tempdir().unwrap();
    let entries = |dir: &Path| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["digest"].as_str().unwrap().to_string())
            .collect()
    };

    let none = work.path().join("none");
    export(&none, &["--no-referrers"], &s.img.reference());
    assert_eq!(entries(&none), vec![s.img.digest.clone()]);

    let sboms = work.path().join("sboms");
    export(&sboms, &["--referrers-type", SPDX], &s.img.reference());
    assert_eq!(entries(&sboms), vec![s.img.digest.clone(), s.sbom.clone()]);
}

/// An OCI index listing `entries`, as a referrers API page.
fn page(entries: &[serde_json::Value]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": images::OCI_INDEX,
        "manifests": entries,
    }))
    .unwrap()
}

#[test]
fn the_referrers_api_is_read_page_by_page_and_trusted_on_import() {
    use crate::support::faulty::{Fault, Faulty, Match};
    let src = Registry::start();
    let repo = "api/app";
    let img = images::push_multiarch_oci(&src, repo, "1", 8, &["linux/amd64"], 16 * 1024);
    let subject = (images::OCI_INDEX, img.digest.as_str(), img.bytes.len());
    let (a, a_listed) = push_artifact(&src, repo, Some(SIG), b"first page", Some(subject), None);
    let (b, b_listed) = push_artifact(&src, repo, Some(SPDX), b"second page", Some(subject), None);

    // A registry with the referrers API, two pages for the index; every
    // other subject has none.
    let proxy = Faulty::start(&src);
    let path = format!("/v2/{repo}/referrers/{}", img.digest);
    let json = "application/vnd.oci.image.index.v1+json";
    proxy.always(
        Match::path_contains("last=page1"),
        Fault::Answer {
            body: page(&[b_listed]).into(),
            content_type: json.into(),
            headers: vec![],
        },
    );
    proxy.always(
        Match::path_is(&path),
        Fault::Answer {
            body: page(&[a_listed]).into(),
            content_type: json.into(),
            headers: vec![(
                "Link".into(),
                format!("<{path}?n=1&last=page1>; rel=\"next\""),
            )],
        },
    );
    proxy.always(
        Match::path_contains("/referrers/"),
        Fault::Answer {
            body: page(&[]).into(),
            content_type: json.into(),
            headers: vec![],
        },
    );

    let work = tempfile::tempdir().unwrap();
    export(work.path(), &[], &format!("{}/{repo}:1", proxy.host()));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("index.json")).unwrap()).unwrap();
    let digests: BTreeSet<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        digests,
        BTreeSet::from([img.digest.clone(), a.clone(), b.clone()])
    );
    // Found through the API: the fallback tag was never asked for.
    assert!(
        proxy
            .requests(&Match::path_contains("/manifests/sha256-"))
            .is_empty()
    );

    // A target that has the API indexes subjects itself: no fallback tag.
    let dst = Registry::start();
    let target = Faulty::start(&dst);
    target.always(
        Match::path_contains("/referrers/"),
        Fault::Answer {
            body: page(&[]).into(),
            content_type: json.into(),
            headers: vec![],
        },
    );
    import(work.path(), &target.host());
    for d in [&a, &b] {
        assert!(
            images::try_get_manifest(&dst, repo, d).is_some(),
            "{d} not pushed"
        );
    }
    assert!(
        !images::list_tags(&dst, repo)
            .iter()
            .any(|t| t.starts_with("sha256-")),
        "{:?}",
        images::list_tags(&dst, repo)
    );
}
