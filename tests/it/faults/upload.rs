//! Import into a registry that fails uploads, drops them halfway, and
//! lets tokens expire between the requests of one upload.

use std::time::Duration;

use super::{LAYER, Work, failed_cleanly};
use crate::support::faulty::{Fault, Faulty, Match, TokenAuth};
use crate::support::images::{self, PushedImage};
use crate::support::registry::Registry;

fn image(reg: &Registry, repo: &str, seed: u64) -> PushedImage {
    images::push_multiarch_oci(reg, repo, "v1", seed, &["linux/amd64"], LAYER)
}

/// Exports `set` from its registry into the work's bundle, untouched.
fn bundle_of(work: &Work, set: &[&PushedImage]) {
    let refs: Vec<String> = set.iter().map(|i| i.reference()).collect();
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    work.export(&refs).success();
}

fn import(work: &Work, to: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
    work.airlock()
        .args(["import", "--plain-http"])
        .arg(work.bundle())
        .args(["--to", to])
        .args(extra)
        .assert()
}

/// The PUT that completes the upload of `digest` (its URL carries it).
fn put_of(digest: &str) -> Match {
    Match::path_contains(&digest["sha256:".len()..]).method("PUT")
}

/// Asserts the target serves `image` under `repo` with every digest.
fn assert_landed(dst: &Registry, repo: &str, image: &PushedImage) {
    let served = images::try_get_manifest(dst, repo, &image.tag)
        .unwrap_or_else(|| panic!("{repo}:{} not on the target", image.tag));
    assert_eq!(served.docker_content_digest, image.digest, "{repo}");
    assert_eq!(served.bytes, image.bytes, "{repo}");
    for m in &image.manifests {
        assert!(
            images::try_get_manifest(dst, repo, &m.digest).is_some(),
            "{}",
            m.digest
        );
    }
    for d in image.blob_digests() {
        // get_blob checks the bytes hash to the digest.
        images::get_blob(dst, repo, &d);
    }
}

#[test]
fn uploads_that_fail_or_drop_are_retried_and_land_every_digest() {
    let src = Registry::start();
    let dst = Registry::start();
    let proxy = Faulty::start(&dst);
    let img = image(&src, "team/app", 41);
    let work = Work::new();
    bundle_of(&work, &[&img]);
    let layers = &img.manifests[0].layers;
    let sessions = Match::uploads().method("POST");
    proxy.first(2, sessions.clone(), Fault::ServerError(503));
    proxy.first(1, put_of(&layers[0].digest), Fault::DropRequest(LAYER / 2));
    proxy.first(2, put_of(&layers[1].digest), Fault::ServerError(503));
    let child_put = Match::manifest(&img.manifests[0].digest).method("PUT");
    proxy.first(1, child_put.clone(), Fault::DropRequest(16));
    let tag_put = Match::manifest("v1").method("PUT");
    proxy.first(1, tag_put.clone(), Fault::ServerError(502));

    import(&work, &format!("{}/mirror", proxy.host()), &[]).success();

    assert_landed(&dst, "mirror/team/app", &img);
    let statuses = |m: &Match| -> Vec<u16> { proxy.requests(m).iter().map(|r| r.status).collect() };
    assert_eq!(statuses(&sessions)[..3], [503, 503, 202]);
    assert_eq!(statuses(&put_of(&layers[0].digest)), [0, 201]);
    assert_eq!(statuses(&put_of(&layers[1].digest)), [503, 503, 201]);
    assert_eq!(statuses(&child_put), [0, 201]);
    assert_eq!(statuses(&tag_put), [502, 201]);
}

#[test]
fn a_throttled_upload_waits_as_long_as_retry_after_says() {
    let src = Registry::start();
    let dst = Registry::start();
    let proxy = Faulty::start(&dst);
    let img = image(&src, "team/throttled", 46);
    let work = Work::new();
    bundle_of(&work, &[&img]);
    let layer = img.manifests[0].layers[0].digest.clone();
    proxy.first(1, put_of(&layer), Fault::too_many_requests("1"));

    import(&work, &proxy.host(), &[]).success();

    assert_landed(&dst, "team/throttled", &img);
    let puts = proxy.requests(&put_of(&layer));
    let statuses: Vec<u16> = puts.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 201]);
    let gap = puts[1].at - puts[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
}

#[test]
fn an_upload_that_keeps_failing_pushes_no_tag_for_its_image() {
    let src = Registry::start();
    let dst = Registry::start();
    let proxy = Faulty::start(&dst);
    let bad = image(&src, "team/bad", 42);
    let good = image(&src, "team/good", 43);
    let closed = image(&src, "team/closed", 45);
    let work = Work::new();
    bundle_of(&work, &[&bad, &good, &closed]);
    let layer = bad.manifests[0].layers[1].digest.clone();
    proxy.always(put_of(&layer), Fault::ServerError(503));
    let sessions = Match::path_contains("/team/closed/blobs/uploads/").method("POST");
    proxy.always(sessions.clone(), Fault::ServerError(503));

    let err = failed_cleanly(import(&work, &proxy.host(), &["--retries", "1"]));

    let line_of = |repo: &str| {
        err.lines()
            .find(|l| l.contains(repo))
            .unwrap_or_else(|| panic!("no line names {repo}:\n{err}"))
            .to_string()
    };
    let line = line_of("team/bad");
    assert!(line.contains(&layer) && line.contains("503"), "{line}");
    assert!(line_of("team/closed").contains("503"));
    for repo in ["team/bad", "team/closed"] {
        assert!(images::list_tags(&dst, repo).is_empty(), "{repo}");
        let pushed =
            proxy.requests(&Match::path_contains(&format!("/{repo}/manifests/")).method("PUT"));
        assert!(pushed.is_empty(), "{pushed:?}");
    }
    // --retries 1: two attempts at each upload, whichever of its requests
    // fails, not two per layer of retrying code.
    assert_eq!(proxy.requests(&put_of(&layer)).len(), 2);
    let opened = proxy.requests(&sessions).len();
    let blobs = closed.blob_digests().len();
    assert_eq!(
        opened,
        2 * blobs,
        "{opened} session requests for {blobs} blobs"
    );
    assert_landed(&dst, "team/good", &good);
}

#[test]
fn a_token_that_expires_between_the_requests_of_an_upload_is_renewed() {
    let src = Registry::start();
    let dst = Registry::start();
    // Three requests a token, one upload at a time: the push token goes
    // on a POST, a PUT and the next POST, so the PUT after that meets it
    // expired (HEADs use a pull token of their own).
    let auth = TokenAuth {
        uses: Some(3),
        ..TokenAuth::new("erin", "upl0ad-pass")
    };
    let proxy = Faulty::with_token_auth(&dst, auth);
    let img = image(&src, "team/tok", 44);
    let work = Work::new();
    bundle_of(&work, &[&img]);

    work.airlock()
        .args([
            "import",
            "--plain-http",
            "-j",
            "1",
            "--username",
            "erin",
            "--password-stdin",
        ])
        .arg(work.bundle())
        .args(["--to", &proxy.host()])
        .write_stdin("upl0ad-pass")
        .assert()
        .success();

    assert_landed(&dst, "team/tok", &img);
    let puts: Vec<u16> = proxy
        .requests(&Match::uploads().method("PUT"))
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(puts, [201, 401, 201, 401, 201]);
}
