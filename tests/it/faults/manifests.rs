//! Manifests no registry should serve: malformed, oversized, of unknown
//! type, cyclic, nested too deep, naming digests that are paths or of
//! algorithms airlock does not have. Each must fail its image with a clear
//! error, without a panic and without a file written outside the bundle.

use super::{Work, failed_cleanly, files_under};
use crate::support::faulty::{Fault, Faulty, Match};
use crate::support::images::{self, Flavour, OCI_INDEX, OCI_MANIFEST};
use crate::support::layout::check_oci_layout;
use crate::support::registry::Registry;
use crate::support::tools::sha256_digest;

const REPO: &str = "team/odd";

/// An OCI index with one entry, as exact bytes.
fn index_of(media_type: &str, digest: &str, size: usize) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}]}}"#
    )
}

/// Pushes `levels` indexes, each listing the one below, over a manifest;
/// the top one under `tag`.
fn push_nested(reg: &Registry, tag: &str, levels: usize, base: &images::Manifest) {
    let (mut media_type, mut digest, mut size) = (
        base.media_type.clone(),
        base.digest.clone(),
        base.bytes.len(),
    );
    for level in 1..=levels {
        let body = index_of(&media_type, &digest, size);
        let reference = if level == levels {
            tag.to_string()
        } else {
            sha256_digest(body.as_bytes())
        };
        digest = images::push_manifest(reg, REPO, &reference, OCI_INDEX, body.as_bytes());
        (media_type, size) = (OCI_INDEX.to_string(), body.len());
    }
}

/// Makes the proxy answer `tag` (HEAD and GET) and the digest it names
/// with `body`.
fn serve_at(proxy: &Faulty, tag: &str, body: String, media_type: &str) {
    let digest = sha256_digest(body.as_bytes());
    for reference in [tag, digest.as_str()] {
        proxy.always(
            Match::manifest(reference),
            Fault::serve(body.clone(), media_type),
        );
    }
}

#[test]
fn bad_manifests_fail_their_image_clearly_and_write_nothing_outside_the_bundle() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let base = images::build_single(31, &[1024], Flavour::Oci);
    images::push_manifest_image(&reg, REPO, "base", &base);
    let m = format!(r#""mediaType":"{OCI_MANIFEST}""#);
    let config = r#""config":{"mediaType":"application/vnd.oci.image.config.v1+json""#;

    // Four levels of index are allowed (the bundle's good image), five not.
    push_nested(&reg, "deep4", 4, &base);
    push_nested(&reg, "deep5", 5, &base);

    let broken = format!(r#"{{"schemaVersion":2,{m},"config":"#);
    serve_at(&proxy, "json", broken.clone(), OCI_MANIFEST);
    // The same without Docker-Content-Digest: read by tag, still refused.
    proxy.always(
        Match::manifest("json-bare"),
        Fault::ReplaceBody {
            body: broken.into(),
            content_type: OCI_MANIFEST.into(),
            digest: None,
        },
    );
    let pad = "x".repeat(4 << 20);
    let big = format!(r#"{{"schemaVersion":2,{m},"annotations":{{"pad":"{pad}"}}}}"#);
    serve_at(&proxy, "big", big, OCI_MANIFEST);
    let odd = "application/vnd.example.thing+json";
    serve_at(
        &proxy,
        "unknown",
        format!(r#"{{"schemaVersion":2,"mediaType":"{odd}"}}"#),
        odd,
    );
    let dotdot = "sha256:../../x";
    serve_at(
        &proxy,
        "dotdot",
        index_of(OCI_MANIFEST, dotdot, 2),
        OCI_INDEX,
    );
    let escape = "sha256:../../../../../../tmp/airlock-escape";
    let layer = format!(
        r#"{{"schemaVersion":2,{m},{config},"digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{escape}","size":2}}]}}"#,
        sha256_digest(b"{}")
    );
    serve_at(&proxy, "dotdot-layer", layer, OCI_MANIFEST);
    let md5 = "md5:d41d8cd98f00b204e9800998ecf8427e";
    serve_at(&proxy, "md5", index_of(OCI_MANIFEST, md5, 2), OCI_INDEX);
    // A digest cannot name its own document, so an index "listing itself"
    // reaches a client only under a digest that is not its own.
    let claimed = sha256_digest(b"the index claims to be this");
    let cyclic = index_of(OCI_INDEX, &claimed, 100);
    proxy.always(
        Match::manifest("cycle"),
        Fault::ReplaceBody {
            body: cyclic.clone().into(),
            content_type: OCI_INDEX.into(),
            digest: Some(claimed.clone()),
        },
    );
    proxy.always(
        Match::manifest(&claimed),
        Fault::ReplaceBody {
            body: cyclic.into(),
            content_type: OCI_INDEX.into(),
            digest: Some(claimed.clone()),
        },
    );

    let work = Work::new();
    let good = format!("{}/{REPO}:deep4", proxy.host());
    work.export(&[&good]).success();
    let before = check_oci_layout(work.bundle());
    assert_eq!(before.refs.len(), 1);

    let cases = [
        ("json", "not valid JSON".to_string()),
        ("json-bare", "not valid JSON".to_string()),
        ("big", "4194304-byte manifest limit".to_string()),
        ("unknown", format!("unknown media type \"{odd}\"")),
        ("dotdot", format!("invalid digest \"{dotdot}\"")),
        ("dotdot-layer", format!("invalid digest \"{escape}\"")),
        ("md5", format!("unsupported digest algorithm in \"{md5}\"")),
        ("cycle", format!("content of {claimed} hashes to")),
        ("deep5", "nest deeper than 4 levels".to_string()),
    ];
    for (tag, expected) in cases {
        let reference = format!("{}/{REPO}:{tag}", proxy.host());
        let err = failed_cleanly(work.export(&[&reference]));
        let line = err
            .lines()
            .find(|l| l.contains(&reference))
            .unwrap_or_else(|| panic!("{tag}: no line names the image:\n{err}"));
        assert!(
            line.contains(&expected),
            "{tag}: wanted {expected:?} in\n{line}"
        );

        // The bundle is as it was; nothing landed beside it or in HOME.
        let after = check_oci_layout(work.bundle());
        assert_eq!(after.refs, before.refs, "{tag}");
        for f in files_under(work.path()) {
            assert!(f.starts_with("out/bundle/"), "{tag}: wrote {f}");
        }
    }
    assert!(!std::path::Path::new("/tmp/airlock-escape").exists());
}

#[test]
fn a_registry_that_sends_no_digest_header_is_read_by_tag_and_verified_by_hash() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = images::push_multiarch_oci(&reg, REPO, "v1", 32, &["linux/amd64"], 1024);
    proxy.always(
        Match::manifest("v1"),
        Fault::ReplaceBody {
            body: img.bytes.clone().into(),
            content_type: img.media_type.clone(),
            digest: None,
        },
    );
    let work = Work::new();

    work.export(&[&proxy.reference(&img)]).success();

    super::assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    let methods: Vec<String> = proxy
        .requests(&Match::manifest("v1"))
        .into_iter()
        .map(|r| r.method)
        .collect();
    assert_eq!(methods, ["HEAD", "GET"]);
}
