//! The chunked archive: export, verify, inspect, import, and every way a
//! part can go wrong (issue #4).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::images::{self, ImageSeed, PushedImage};
use crate::support::layout::check_oci_layout;
use crate::support::registry::Registry;
use crate::support::tools::{Podman, airlock, run, skopeo_inspect_raw};

const PLATFORMS: &[&str] = &["linux/amd64", "linux/arm64"];
const CHUNK: u64 = 256 * 1024;

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).to_string()
}

fn export_archive(out: &Path, chunk: &str, refs: &[String]) -> assert_cmd::assert::Assert {
    airlock()
        .args(["export", "--plain-http", "--chunk-size", chunk, "-o"])
        .arg(out)
        .args(refs)
        .assert()
}

/// A multi-arch set with shared base layers and one layer larger than a part.
fn image_set(reg: &Registry) -> Vec<PushedImage> {
    vec![
        images::push_multiarch_oci(
            reg,
            "set/a",
            "1",
            ImageSeed { base: 1, app: 2 },
            PLATFORMS,
            100 * 1024,
        ),
        images::push_multiarch_oci(
            reg,
            "set/b",
            "1",
            ImageSeed { base: 1, app: 3 },
            PLATFORMS,
            100 * 1024,
        ),
        images::push_single(
            reg,
            "set/big",
            "1",
            4,
            &[700 * 1024],
            images::Flavour::Docker,
        ),
    ]
}

fn refs(set: &[PushedImage]) -> Vec<String> {
    set.iter().map(|i| i.reference()).collect()
}

fn parts(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with(&format!("{name}.")) && n.ends_with(".tar")
        })
        .collect();
    parts.sort();
    parts
}

fn verify(bundle: &Path) -> assert_cmd::assert::Assert {
    airlock().arg("verify").arg(bundle).assert()
}

#[test]
fn small_chunks_verify_reproduce_and_import_with_source_digests() {
    let src = Registry::start();
    let set = image_set(&src);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("site.tar");

    export_archive(&out, "256KiB", &refs(&set)).success();
    let files = parts(work.path(), "site");
    assert!(files.len() >= 4, "{files:?}");
    for f in &files {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(size <= CHUNK, "{} is {size} bytes", f.display());
        // Every part is a plain tar that GNU tar lists on its own.
        run(Command::new("tar").arg("tf").arg(f));
    }
    let sums = run(Command::new("sha256sum")
        .args(["-c", "site.sha256"])
        .current_dir(work.path()));
    assert!(String::from_utf8_lossy(&sums.stdout).contains("site.index.json: OK"));
    verify(&work.path().join("site.index.json")).success();

    // Inspect names the images and the parts.
    let json = airlock()
        .args(["inspect", "--json"])
        .arg(&files[1])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(v["kind"], "archive");
    assert_eq!(v["images"].as_array().unwrap().len(), 3);
    assert_eq!(v["parts"].as_array().unwrap().len(), files.len());
    assert_eq!(
        v["images"][0]["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );

    // The same images and options give the same bytes.
    let again = tempfile::tempdir().unwrap();
    export_archive(&again.path().join("site.tar"), "256KiB", &refs(&set)).success();
    for f in files.iter().chain([
        &work.path().join("site.index.json"),
        &work.path().join("site.sha256"),
    ]) {
        let twin = again.path().join(f.file_name().unwrap());
        assert_eq!(
            std::fs::read(f).unwrap(),
            std::fs::read(&twin).unwrap(),
            "{}",
            f.display()
        );
    }

    // Import from the archive into an empty registry keeps every digest.
    let dst = Registry::start();
    airlock()
        .args(["import", "--plain-http"])
        .arg(work.path().join("site"))
        .args(["--to", &dst.host()])
        .assert()
        .success();
    for img in &set {
        let got =
            images::try_get_manifest(&dst, &img.repo, &img.tag).map(|m| m.docker_content_digest);
        assert_eq!(got.as_deref(), Some(img.digest.as_str()), "{}", img.repo);
    }
}

#[test]
fn every_kind_of_bad_part_is_named() {
    let src = Registry::start();
    let set = image_set(&src);
    let work = tempfile::tempdir().unwrap();
    export_archive(&work.path().join("site.tar"), "256KiB", &refs(&set)).success();
    // Another bundle under the same name, for a foreign part.
    let other = tempfile::tempdir().unwrap();
    export_archive(&other.path().join("site.tar"), "256KiB", &refs(&set[..1])).success();

    let case = |name: &str, damage: &dyn Fn(&Path)| -> String {
        let copy = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(work.path()).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, copy.path().join(f.file_name().unwrap())).unwrap();
        }
        damage(copy.path());
        let a = verify(&copy.path().join("site.index.json")).code(1);
        let report = stdout(&a);
        assert!(
            report.contains("image "),
            "{name}: no image named:\n{report}"
        );
        report
    };

    let flipped = case("flipped", &|d| {
        let p = d.join("site.0003.tar");
        let mut b = std::fs::read(&p).unwrap();
        let i = b.len() / 2;
        b[i] ^= 1;
        std::fs::write(&p, b).unwrap();
    });
    assert!(
        flipped.contains("part 0003") && flipped.contains("corrupt"),
        "{flipped}"
    );
    assert!(flipped.contains("blob sha256:"), "{flipped}");

    let truncated = case("truncated", &|d| {
        let p = d.join("site.0002.tar");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 5000]).unwrap();
    });
    assert!(
        truncated.contains("part 0002") && truncated.contains("truncated"),
        "{truncated}"
    );

    let missing = case("missing", &|d| {
        std::fs::remove_file(d.join("site.0004.tar")).unwrap()
    });
    assert!(
        missing.contains("part 0004") && missing.contains("missing"),
        "{missing}"
    );

    let foreign = case("foreign", &|d| {
        std::fs::copy(other.path().join("site.0002.tar"), d.join("site.0002.tar")).unwrap();
    });
    assert!(
        foreign.contains("part 0002") && foreign.contains("another bundle"),
        "{foreign}"
    );

    let renamed = case("renamed", &|d| {
        std::fs::copy(d.join("site.0002.tar"), d.join("site.0003.tar")).unwrap();
    });
    assert!(
        renamed.contains("part 0003") && renamed.contains("is part 0002"),
        "{renamed}"
    );
}

#[test]
fn one_part_archive_is_a_standard_oci_archive() {
    let src = Registry::start();
    let img = images::push_multiarch_oci(&src, "solo/app", "2", 9, PLATFORMS, 64 * 1024);
    let single = images::push_single(
        &src,
        "solo/one",
        "3",
        10,
        &[64 * 1024],
        images::Flavour::Oci,
    );
    let work = tempfile::Builder::new()
        .prefix(&format!("airlock-onepart-{}", std::process::id()))
        .rand_bytes(0)
        .tempdir()
        .unwrap();
    let out = work.path().join("solo.tar");
    airlock()
        .args(["export", "--plain-http", "-q", "-o"])
        .arg(&out)
        .args([img.reference(), single.reference()])
        .assert()
        .success();
    let part = work.path().join("solo.0001.tar");
    assert_eq!(parts(work.path(), "solo"), vec![part.clone()]);

    let raw = skopeo_inspect_raw(&format!(
        "oci-archive:{}:{}",
        part.display(),
        img.reference()
    ));
    assert_eq!(raw, img.bytes);
    let podman = Podman::new();
    let loaded = podman.run(&["load", "-i", part.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains("solo/one:3"),
        "{loaded:?}"
    );

    // Extracting the part gives an OCI layout.
    let extracted = work.path().join("x");
    std::fs::create_dir(&extracted).unwrap();
    run(Command::new("tar")
        .arg("xf")
        .arg(&part)
        .arg("-C")
        .arg(&extracted));
    let report = check_oci_layout(&extracted);
    assert_eq!(report.refs[&img.reference()], img.digest);
}

#[test]
fn import_names_a_missing_part_and_a_rerun_with_it_finishes() {
    let src = Registry::start();
    let set = image_set(&src);
    let work = tempfile::tempdir().unwrap();
    export_archive(&work.path().join("site.tar"), "256KiB", &refs(&set)).success();
    let last = parts(work.path(), "site").pop().unwrap();
    let aside = work.path().join("aside.tar");
    std::fs::rename(&last, &aside).unwrap();
    let label = last.file_name().unwrap().to_string_lossy()[5..9].to_string();

    let dst = Registry::start();
    let import = || {
        airlock()
            .args(["import", "--plain-http"])
            .arg(work.path().join("site.index.json"))
            .args(["--to", &dst.host()])
            .assert()
    };
    let a = import().code(1);
    let err = stderr(&a);
    assert!(
        err.contains(&format!("part {label}")) && err.contains("missing"),
        "{err}"
    );
    let served = |img: &PushedImage| {
        images::try_get_manifest(&dst, &img.repo, &img.tag).map(|m| m.docker_content_digest)
    };
    // Images that do not need the missing part arrived; the others did not.
    let arrived: Vec<bool> = set.iter().map(|i| served(i).is_some()).collect();
    assert!(
        arrived.iter().any(|a| *a) && arrived.iter().any(|a| !*a),
        "{arrived:?}\n{err}"
    );

    std::fs::rename(&aside, &last).unwrap();
    import().success();
    for img in &set {
        assert_eq!(served(img).as_deref(), Some(img.digest.as_str()));
    }
}

#[test]
fn a_failed_archive_export_keeps_complete_parts_for_the_rerun() {
    let src = Registry::start();
    let img = images::push_multiarch_oci(&src, "slow/app", "1", 21, PLATFORMS, 3 << 20);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("big.tar");
    // The last blob of the plan is arm64's app layer: make it fail.
    let layer = &img.manifest("linux/arm64").layers[1];
    assert!(images::delete_blob(&src, &img.repo, &layer.digest));

    let a = export_archive(&out, "1MiB", &[img.reference()]).code(1);
    assert!(stderr(&a).contains(&layer.digest), "{}", stderr(&a));
    // Never an index that describes incomplete parts.
    assert!(!work.path().join("big.index.json").exists());
    assert!(work.path().join(".big.airlock-partial.json").exists());

    images::push_blob(&src, &img.repo, &layer.bytes);
    let a = export_archive(&out, "1MiB", &[img.reference()]).success();
    let err = stderr(&a);
    assert!(err.contains("kept from an earlier run"), "{err}");
    verify(&work.path().join("big.index.json")).success();
    assert!(!work.path().join(".big.airlock-partial.json").exists());

    // A run on the complete bundle downloads nothing.
    let again = export_archive(&out, "1MiB", &[img.reference()]).success();
    assert!(
        stderr(&again).contains("already up to date"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn killed_archive_export_never_leaves_a_false_index() {
    let src = Registry::start();
    let img = images::push_multiarch_oci(&src, "kill/app", "1", 22, PLATFORMS, 4 << 20);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("k.tar");
    for delay in [50u64, 150, 300] {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin!("airlock"))
            .args([
                "export",
                "--plain-http",
                "-q",
                "-j",
                "1",
                "--chunk-size",
                "1MiB",
                "-o",
            ])
            .arg(&out)
            .arg(img.reference())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        if work.path().join("k.index.json").exists() {
            verify(&work.path().join("k.index.json")).success();
        }
    }
    export_archive(&out, "1MiB", &[img.reference()]).success();
    verify(&work.path().join("k.index.json")).success();
}

#[test]
fn source_date_epoch_sets_member_times_and_bad_sizes_are_usage_errors() {
    let src = Registry::start();
    let img = images::push_single(
        &src,
        "time/app",
        "1",
        31,
        &[10 * 1024],
        images::Flavour::Oci,
    );
    let work = tempfile::tempdir().unwrap();
    airlock()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["export", "--plain-http", "-q", "-o"])
        .arg(work.path().join("t.tar"))
        .arg(img.reference())
        .assert()
        .success();
    let listing = run(Command::new("tar")
        .args(["--utc", "-tvf"])
        .arg(work.path().join("t.0001.tar")));
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("2023-11-14"),
        "{listing:?}"
    );

    for bad in ["12 parsecs", "10", "-1MiB"] {
        export_archive(&work.path().join("u.tar"), bad, &[img.reference()]).code(2);
    }
    assert!(!work.path().join("u.0001.tar").exists());
}

/// An empty blob (a zero-byte file pushed as an artifact layer) is a tar
/// member with no data. The part's hasher once waited for its bytes
/// forever; now the archive finishes, verifies and imports with the same
/// digests.
#[test]
fn an_empty_blob_is_archived_verified_and_imported() {
    let src = Registry::start();
    let repo = "team/empty";
    let config = b"{}";
    let config_digest = images::push_blob(&src, repo, config);
    let empty_digest = images::push_blob(&src, repo, b"");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": images::OCI_MANIFEST,
        "artifactType": "application/vnd.example.empty",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": empty_digest, "size": 0}],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = images::push_manifest(&src, repo, "v1", images::OCI_MANIFEST, &bytes);
    let work = tempfile::tempdir().unwrap();

    airlock()
        .args(["export", "--plain-http", "--chunk-size", "1MiB", "-o"])
        .arg(work.path().join("site.tar"))
        .arg(format!("{}/{repo}:v1", src.host()))
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .success();
    verify(&work.path().join("site.index.json")).success();
    let listing = run(Command::new("tar")
        .arg("tvf")
        .arg(work.path().join("site.0001.tar")));
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    let hex = empty_digest.trim_start_matches("sha256:");
    assert!(
        listing
            .lines()
            .any(|l| l.ends_with(&format!("blobs/sha256/{hex}")) && l.contains(" 0 ")),
        "{listing}"
    );

    let dst = Registry::start();
    airlock()
        .args(["import", "--plain-http"])
        .arg(work.path().join("site"))
        .args(["--to", &dst.host()])
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .success();
    let got = images::try_get_manifest(&dst, repo, "v1").map(|m| m.docker_content_digest);
    assert_eq!(got.as_deref(), Some(digest.as_str()));
}
