//! Export through a registry that throttles, fails, drops connections and
//! corrupts what it sends.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{
    LAYER, Work, assert_exported, assert_only_whole_blobs, blob_file, failed_cleanly, stderr,
};
use crate::support::faulty::{Fault, Faulty, Match};
use crate::support::images::{self, PushedImage};
use crate::support::layout::check_oci_layout;
use crate::support::registry::Registry;

/// An index over one linux/amd64 manifest: a config and two layers.
fn image(reg: &Registry, repo: &str, seed: u64) -> PushedImage {
    images::push_multiarch_oci(reg, repo, "v1", seed, &["linux/amd64"], LAYER)
}

#[test]
fn retry_after_in_seconds_and_as_an_http_date_is_waited_out() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = image(&reg, "team/slow", 1);
    // Two layers, fetched at the same time, so neither wait delays the
    // other's first request.
    let (seconds, dated) = (
        img.manifests[0].layers[0].digest.clone(),
        img.manifests[0].layers[1].digest.clone(),
    );
    proxy.first(1, Match::blob(&seconds), Fault::too_many_requests("1"));
    // Far enough ahead (a date has whole seconds) to be ahead still when
    // the layer is asked for on a busy machine.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
    proxy.first(1, Match::blob(&dated), Fault::too_many_requests(&date));
    let work = Work::new();

    work.export(&[&proxy.reference(&img)]).success();

    assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    // With AIRLOCK_RETRY_BASE_MS=10 airlock's own backoff is 10 ms: a gap
    // of a second, or a retry no earlier than the date, is the server's
    // Retry-After being honoured.
    let seen = proxy.requests(&Match::blob(&seconds));
    assert_eq!(
        seen.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200]
    );
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");

    let seen = proxy.requests(&Match::blob(&dated));
    assert_eq!(
        seen.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200]
    );
    let due = httpdate::parse_http_date(&date).unwrap();
    assert!(
        seen[0].when + Duration::from_millis(200) < due,
        "the date had passed"
    );
    // A few milliseconds of slack for rounding between the two clocks' reads.
    assert!(
        seen[1].when + Duration::from_millis(5) >= due,
        "retried {:?} before {date}",
        due.duration_since(seen[1].when).unwrap_or_default()
    );
}

#[test]
fn server_errors_on_manifests_and_blobs_are_retried_to_an_exact_layout() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = image(&reg, "team/flaky", 2);
    let m = &img.manifests[0];
    let index = img.index_digest.clone().unwrap();
    let cases = [
        (Match::manifest("v1").method("HEAD"), 503, 1),
        (Match::manifest(&index), 500, 2),
        (Match::manifest(&m.digest), 429, 1),
        (Match::blob(&m.config.digest), 503, 2),
        (Match::blob(&m.layers[0].digest), 500, 1),
        (Match::blob(&m.layers[1].digest), 502, 3),
    ];
    for (matcher, code, times) in &cases {
        let fault = match code {
            // Retry-After: 0 says "now"; airlock must not read it as "never".
            429 => Fault::too_many_requests("0"),
            _ => Fault::ServerError(*code),
        };
        proxy.first(*times, matcher.clone(), fault);
    }
    let work = Work::new();

    work.export(&[&proxy.reference(&img)]).success();

    assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    // Each request was repeated exactly as often as it failed, no more.
    for (matcher, code, times) in &cases {
        let statuses: Vec<u16> = proxy.requests(matcher).iter().map(|r| r.status).collect();
        let mut expected = vec![*code; *times];
        expected.push(200);
        assert_eq!(statuses, expected, "{matcher:?}");
    }
}

#[test]
fn a_blob_that_keeps_failing_fails_only_its_image() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let bad = image(&reg, "team/broken", 3);
    let good = image(&reg, "team/fine", 4);
    let layer = bad.manifests[0].layers[1].digest.clone();
    proxy.always(Match::blob(&layer), Fault::ServerError(503));
    let work = Work::new();

    let a = work.export(&[
        "--retries",
        "2",
        &proxy.reference(&bad),
        &proxy.reference(&good),
    ]);
    let err = failed_cleanly(a);

    let line = err
        .lines()
        .find(|l| l.contains(&proxy.reference(&bad)))
        .unwrap_or_else(|| panic!("no line names the image:\n{err}"));
    assert!(line.contains(&layer) && line.contains("503"), "{line}");
    assert!(err.contains("1 of 2 images"), "{err}");
    assert_exported(&work.bundle(), &proxy.reference(&good), &good);
    let report = check_oci_layout(work.bundle());
    assert!(!report.refs.contains_key(&proxy.reference(&bad)));
    assert!(!blob_file(&work.bundle(), &layer).exists());
    for d in bad.all_manifest_digests() {
        assert!(!blob_file(&work.bundle(), &d).exists(), "manifest {d}");
    }
    assert_only_whole_blobs(&work.bundle());
    // --retries 2 means three attempts in all, not three per layer of code.
    let tries = proxy.requests(&Match::blob(&layer).method("GET")).len();
    assert_eq!(tries, 3, "{layer} was asked for {tries} times");
}

#[test]
fn a_connection_dropped_mid_blob_resumes_from_where_it_stopped() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = image(&reg, "team/cut", 5);
    let layer = img.manifests[0].layers[0].digest.clone();
    let cut = LAYER / 2;
    proxy.first(1, Match::blob(&layer), Fault::TruncateBody(cut));
    let work = Work::new();

    work.export(&[&proxy.reference(&img)]).success();

    assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    let seen = proxy.requests(&Match::blob(&layer));
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={cut}-").as_str())
    );
    assert_eq!(seen[1].status, 206);
}

#[test]
fn a_connection_that_keeps_dropping_is_followed_while_it_makes_progress() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = image(&reg, "team/unsteady", 10);
    let dead = image(&reg, "team/dead", 11);
    let layer = img.manifests[0].layers[0].digest.clone();
    // Every answer is cut after an eighth of the layer's file: eight drops,
    // more than --retries 3 allows in a row, but each one after progress.
    let piece = LAYER / 8;
    proxy.always(Match::blob(&layer), Fault::TruncateBody(piece));
    // This one drops every time before its first byte.
    let stuck = dead.manifests[0].layers[0].digest.clone();
    proxy.always(Match::blob(&stuck), Fault::TruncateBody(0));
    let work = Work::new();

    let err = failed_cleanly(work.export(&[
        "--retries",
        "3",
        &proxy.reference(&img),
        &proxy.reference(&dead),
    ]));

    assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    let ranges: Vec<Option<String>> = proxy
        .requests(&Match::blob(&layer))
        .into_iter()
        .map(|r| r.range)
        .collect();
    let size = img.manifests[0].layers[0].size as usize;
    let expected: Vec<Option<String>> = (0..size.div_ceil(piece))
        .map(|i| (i > 0).then(|| format!("bytes={}-", i * piece)))
        .collect();
    assert_eq!(ranges, expected);

    let line = err.lines().find(|l| l.contains(&proxy.reference(&dead)));
    assert!(line.is_some_and(|l| l.contains(&stuck)), "{err}");
    assert_eq!(proxy.requests(&Match::blob(&stuck)).len(), 4);
}

#[test]
fn a_resume_answered_from_the_start_skips_what_already_arrived() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = image(&reg, "team/norange", 6);
    let layer = img.manifests[0].layers[0].digest.clone();
    proxy.first(1, Match::blob(&layer), Fault::TruncateBody(LAYER / 3));
    proxy.always(Match::blob(&layer), Fault::IgnoreRange);
    let work = Work::new();

    work.export(&[&proxy.reference(&img)]).success();

    // The second answer was a whole 200; the digest still checks out.
    assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    let statuses: Vec<u16> = proxy
        .requests(&Match::blob(&layer))
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 200]);
}

#[test]
fn manifests_cut_short_are_fetched_again() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = image(&reg, "team/shortdoc", 7);
    let index = img.index_digest.clone().unwrap();
    let child = img.manifests[0].digest.clone();
    proxy.first(2, Match::manifest(&index), Fault::TruncateBody(20));
    proxy.first(1, Match::manifest(&child), Fault::TruncateBody(0));
    let work = Work::new();

    work.export(&[&proxy.reference(&img)]).success();

    assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    assert_eq!(proxy.requests(&Match::manifest(&index)).len(), 3);
    assert_eq!(proxy.requests(&Match::manifest(&child)).len(), 2);
}

#[test]
fn a_blob_corrupted_once_is_fetched_again() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = image(&reg, "team/blip", 13);
    let layer = img.manifests[0].layers[0].digest.clone();
    proxy.first(1, Match::blob(&layer), Fault::CorruptBody);
    let work = Work::new();

    work.export(&[&proxy.reference(&img)]).success();

    assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    assert_eq!(proxy.requests(&Match::blob(&layer)).len(), 2);
}

#[test]
fn corrupted_blob_bytes_fail_the_image_and_leave_nothing() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = image(&reg, "team/rotten", 8);
    let good = image(&reg, "team/sound", 9);
    let layer = img.manifests[0].layers[0].digest.clone();
    proxy.always(Match::blob(&layer), Fault::CorruptBody);
    let work = Work::new();

    let err = failed_cleanly(work.export(&[
        "--retries",
        "1",
        &proxy.reference(&img),
        &proxy.reference(&good),
    ]));

    let line = err
        .lines()
        .find(|l| l.contains(&proxy.reference(&img)))
        .unwrap_or_else(|| panic!("no line names the image:\n{err}"));
    assert!(line.contains(&layer), "{line}");
    assert!(!blob_file(&work.bundle(), &layer).exists());
    for d in img.all_manifest_digests() {
        assert!(!blob_file(&work.bundle(), &d).exists(), "manifest {d}");
    }
    let index = crate::export::index_json(&work.bundle());
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert_eq!(names, [proxy.reference(&good).as_str()]);
    assert_exported(&work.bundle(), &proxy.reference(&good), &good);
    assert_only_whole_blobs(&work.bundle());
}

/// `airlock export --plain-http -o out/site.tar ARGS...`, and the archive's
/// stem (`out/site`).
fn export_archive(work: &Work, args: &[&str]) -> (assert_cmd::assert::Assert, PathBuf) {
    let tar = work.path().join("out/site.tar");
    let run = work
        .airlock()
        .args(["export", "--plain-http", "-o"])
        .arg(&tar)
        .args(args)
        .assert();
    (run, work.path().join("out/site"))
}

/// `airlock verify` passes the archive at `stem`.
fn verify_archive(work: &Work, stem: &std::path::Path) {
    work.airlock()
        .arg("verify")
        .arg(stem.with_extension("index.json"))
        .assert()
        .success();
}

/// An archive checks a blob's digest as it hashes the part around it, not
/// as the blob arrives; a corrupted transfer is still caught and fetched
/// again, a dropped one resumes, and the finished archive verifies.
#[test]
fn an_archive_blob_corrupted_once_is_fetched_again() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = image(&reg, "team/blip", 14);
    let other = image(&reg, "team/blop", 15);
    let layer = img.manifests[0].layers[1].digest.clone();
    let dropped = other.manifests[0].layers[0].digest.clone();
    proxy.first(1, Match::blob(&layer), Fault::CorruptBody);
    proxy.first(1, Match::blob(&dropped), Fault::TruncateBody(LAYER / 3));
    let work = Work::new();

    let (run, stem) = export_archive(
        &work,
        &[
            "--chunk-size",
            "200KiB",
            &proxy.reference(&img),
            &proxy.reference(&other),
        ],
    );
    let err = stderr(&run.success());

    assert!(err.contains(&layer) && err.contains("again"), "{err}");
    assert_eq!(proxy.requests(&Match::blob(&layer)).len(), 2);
    assert_eq!(proxy.requests(&Match::blob(&dropped)).len(), 2);
    verify_archive(&work, &stem);
}

/// A blob bigger than a part is checked as it arrives instead; corrupted
/// once, it is fetched again too, and a dropped connection on another one
/// resumes.
#[test]
fn an_archive_blob_over_several_parts_corrupted_once_and_a_dropped_one_recover() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = images::push_multiarch_oci(&reg, "team/wide", "v1", 17, &["linux/amd64"], 300 * 1024);
    let (big, small) = (
        img.manifests[0].layers[0].digest.clone(),
        img.manifests[0].layers[1].digest.clone(),
    );
    proxy.first(1, Match::blob(&big), Fault::CorruptBody);
    proxy.first(1, Match::blob(&small), Fault::TruncateBody(100 * 1024));
    let work = Work::new();

    let (run, stem) = export_archive(&work, &["--chunk-size", "128KiB", &proxy.reference(&img)]);
    run.success();

    assert_eq!(proxy.requests(&Match::blob(&big)).len(), 2);
    let resumed = proxy.requests(&Match::blob(&small));
    assert_eq!(resumed.len(), 2, "{resumed:?}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stem.with_extension("index.json")).unwrap()).unwrap();
    let pieces = |d: &str| {
        index["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["digest"] == d)
            .map(|b| b["pieces"].as_array().unwrap().len())
    };
    assert!(pieces(&big).unwrap() > 1, "{index}");
    verify_archive(&work, &stem);
}

#[test]
fn an_archive_blob_that_stays_corrupted_fails_the_export_and_writes_no_index() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = image(&reg, "team/rotten", 16);
    let layer = img.manifests[0].layers[0].digest.clone();
    proxy.always(Match::blob(&layer), Fault::CorruptBody);
    let work = Work::new();

    let (run, stem) = export_archive(&work, &["--retries", "2", &proxy.reference(&img)]);
    let err = failed_cleanly(run);

    let line = err
        .lines()
        .find(|l| l.contains(&proxy.reference(&img)))
        .unwrap_or_else(|| panic!("no line names the image:\n{err}"));
    assert!(line.contains(&layer), "{line}");
    assert_eq!(proxy.requests(&Match::blob(&layer)).len(), 3);
    assert!(!stem.with_extension("index.json").exists());
    assert!(!stem.with_extension("sha256").exists());
}

#[test]
fn blobs_are_fetched_as_many_at_a_time_as_jobs_allows() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let img = image(&reg, "team/parallel", 12);
    let blobs = Match::path_contains("/blobs/sha256:").method("GET");
    let slow = Duration::from_millis(300);
    proxy.always(blobs.clone(), Fault::Delay(slow));

    for (jobs, together) in [("3", true), ("1", false)] {
        proxy.clear_log();
        let work = Work::new();
        work.export(&["-j", jobs, &proxy.reference(&img)]).success();
        assert_exported(&work.bundle(), &proxy.reference(&img), &img);

        // Three slow blobs: asked for at once, or each after the last.
        let at: Vec<_> = proxy.requests(&blobs).iter().map(|r| r.at).collect();
        assert_eq!(at.len(), 3);
        let spread = at[2] - at[0];
        if together {
            assert!(spread < slow / 2, "-j {jobs}: spread over {spread:?}");
        } else {
            assert!(spread >= slow * 2, "-j {jobs}: spread over {spread:?}");
        }
    }
}

#[test]
fn an_image_still_resolving_does_not_hold_back_the_blobs_of_another() {
    let reg = Registry::start();
    let proxy = Faulty::start(&reg);
    let quick = image(&reg, "team/quick", 13);
    let slow = image(&reg, "team/slow", 14);
    // Every manifest of the slow image takes seconds to come.
    let slow_manifests = Match::path_contains("/team/slow/manifests/");
    let wait = Duration::from_millis(1500);
    proxy.always(slow_manifests.clone(), Fault::Delay(wait));
    let work = Work::new();

    work.export(&[&proxy.reference(&quick), &proxy.reference(&slow)])
        .success();

    assert_exported(&work.bundle(), &proxy.reference(&quick), &quick);
    assert_exported(&work.bundle(), &proxy.reference(&slow), &slow);
    // The quick image's blobs were asked for before the slow image's first
    // manifest was even answered.
    let asked = proxy.requests(&slow_manifests)[0].at;
    let quick_blobs = Match::path_contains("/team/quick/blobs/sha256:").method("GET");
    let first = proxy
        .requests(&quick_blobs)
        .iter()
        .map(|r| r.at)
        .min()
        .expect("the quick image's blobs were fetched");
    assert!(
        first < asked + wait,
        "the first blob came {:?} after the slow manifest was asked for",
        first.saturating_duration_since(asked)
    );
}
