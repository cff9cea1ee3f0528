//! Reproducible offline installs: lock files, incremental bundles and
//! bundle diffs (issue #9).

use std::path::Path;

use crate::support::images::{self, ImageSeed, PushedImage};
use crate::support::registry::Registry;
use crate::support::tools::airlock;

const PLATFORMS: &[&str] = &["linux/amd64", "linux/arm64"];

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).to_string()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}

fn export(out: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    airlock()
        .args(["export", "--plain-http", "-q", "-o"])
        .arg(out)
        .args(args)
        .assert()
}

fn import(bundle: &Path, to: &str) -> assert_cmd::assert::Assert {
    airlock()
        .args(["import", "--plain-http"])
        .arg(bundle)
        .args(["--to", to])
        .assert()
}

fn served(reg: &Registry, img: &PushedImage) -> Option<String> {
    images::try_get_manifest(reg, &img.repo, &img.tag).map(|m| m.docker_content_digest)
}

/// Two images sharing per-platform base layers.
fn suite(reg: &Registry, app: u64) -> Vec<PushedImage> {
    vec![
        images::push_multiarch_oci(
            reg,
            "site/web",
            "1",
            ImageSeed { base: 40, app },
            PLATFORMS,
            64 * 1024,
        ),
        images::push_multiarch_oci(
            reg,
            "site/db",
            "1",
            ImageSeed { base: 40, app: 99 },
            PLATFORMS,
            64 * 1024,
        ),
    ]
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_lock_exports_the_same_bytes_after_the_tag_moved() {
    let src = Registry::start();
    let first = suite(&src, 1);
    let refs: Vec<String> = first.iter().map(|i| i.reference()).collect();
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let lock = work.path().join("airlock.lock");

    let mut args = vec![
        "--chunk-size",
        "128KiB",
        "--platform",
        "linux/amd64,linux/arm64",
        "--lock",
    ];
    let lock_s = lock.to_str().unwrap().to_string();
    args.push(&lock_s);
    args.extend(refs.iter().map(String::as_str));
    export(&a.join("site.tar"), &args).success();
    let locked: serde_json::Value = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
    assert_eq!(locked["format"], "airlock-lock");
    assert_eq!(locked["images"][0]["digest"], first[0].digest.as_str());

    // The tag moves on; the lock still exports what it pinned.
    let moved = suite(&src, 2);
    assert_ne!(moved[0].digest, first[0].digest);
    export(&b.join("site.tar"), &["--from-lock", &lock_s]).success();
    assert_eq!(files(&a), files(&b), "the bundles differ");

    // And into a layout, the same index and blobs as the first time.
    let (la, lb) = (work.path().join("la"), work.path().join("lb"));
    let lock2 = work.path().join("layout.lock");
    export(
        &la,
        &["--lock", lock2.to_str().unwrap(), &moved[0].reference()],
    )
    .success();
    let _ = suite(&src, 3);
    export(&lb, &["--from-lock", lock2.to_str().unwrap()]).success();
    assert_eq!(
        std::fs::read(la.join("index.json")).unwrap(),
        std::fs::read(lb.join("index.json")).unwrap()
    );

    let a = export(
        &work.path().join("x"),
        &["--from-lock", &lock_s, "extra/image:1"],
    )
    .code(2);
    assert!(stderr(&a).contains("--from-lock"), "{}", stderr(&a));
}

#[test]
fn an_incremental_bundle_carries_only_new_blobs_and_needs_its_base() {
    let src = Registry::start();
    let old_set = suite(&src, 1);
    let work = tempfile::tempdir().unwrap();
    let week1 = work.path().join("week1.tar");
    let refs: Vec<String> = old_set.iter().map(|i| i.reference()).collect();
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    export(&week1, &refs).success();

    // One image changes (new app layers, same base).
    let new_set = suite(&src, 7);
    assert_eq!(new_set[1].digest, old_set[1].digest);
    let week2 = work.path().join("week2.tar");
    let since = work.path().join("week1.index.json");
    let mut args = vec!["--since", since.to_str().unwrap()];
    args.extend(refs.iter());
    export(&week2, &args).success();

    // Only the changed image's new layers travel; every manifest does.
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("week2.index.json")).unwrap())
            .unwrap();
    let carried: Vec<&str> = idx["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap())
        .collect();
    for m in &new_set[0].manifests {
        assert!(carried.contains(&m.digest.as_str()));
        assert!(
            carried.contains(&m.layers[1].digest.as_str()),
            "new app layer missing"
        );
        assert!(
            !carried.contains(&m.layers[0].digest.as_str()),
            "base layer carried again"
        );
    }
    assert!(
        idx["base"]["buildsOn"]
            .as_str()
            .unwrap()
            .contains("week1.index.json")
    );

    let a = airlock()
        .arg("verify")
        .arg(work.path().join("week2"))
        .assert()
        .success();
    assert!(stdout(&a).contains("incremental"), "{}", stdout(&a));
    let a = airlock()
        .arg("inspect")
        .arg(work.path().join("week2"))
        .assert()
        .success();
    assert!(
        stdout(&a).contains("incremental: builds on"),
        "{}",
        stdout(&a)
    );

    // Alone into an empty registry: refused, naming what is missing.
    let empty = Registry::start();
    let a = import(&work.path().join("week2"), &empty.host()).code(1);
    let err = stderr(&a);
    assert!(
        err.contains(&new_set[0].manifests[0].layers[0].digest),
        "{err}"
    );
    assert!(err.contains("week1"), "{err}");
    assert_eq!(served(&empty, &new_set[0]), None);

    // In order into an empty registry: the source's digests.
    let dst = Registry::start();
    import(&work.path().join("week1"), &dst.host()).success();
    import(&work.path().join("week2"), &dst.host()).success();
    for img in &new_set {
        assert_eq!(
            served(&dst, img).as_deref(),
            Some(img.digest.as_str()),
            "{}",
            img.repo
        );
    }

    // What changed, and what would travel.
    let a = airlock()
        .args(["inspect", "--json"])
        .arg(work.path().join("week1"))
        .arg("--diff")
        .arg(work.path().join("week2"))
        .assert()
        .success();
    let d: serde_json::Value = serde_json::from_str(&stdout(&a)).unwrap();
    assert_eq!(d["changed"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["changed"][0]["old"], old_set[0].digest.as_str());
    assert_eq!(d["changed"][0]["new"], new_set[0].digest.as_str());
    assert_eq!(d["unchanged"], 1);
    assert!(d["bytesToTravel"].as_u64().unwrap() > 0);
}

#[test]
fn since_takes_a_lock_or_a_layout_too() {
    let src = Registry::start();
    let old_set = suite(&src, 1);
    let work = tempfile::tempdir().unwrap();
    let lock = work.path().join("l.lock");
    let layout = work.path().join("full");
    export(
        &layout,
        &["--lock", lock.to_str().unwrap(), &old_set[0].reference()],
    )
    .success();
    let new_set = suite(&src, 5);

    for (name, base) in [("from-lock", &lock), ("from-layout", &layout)] {
        let out = work.path().join(name);
        export(
            &out,
            &["--since", base.to_str().unwrap(), &new_set[0].reference()],
        )
        .success();
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("airlock-base.json")).unwrap()).unwrap();
        let omitted: Vec<&str> = record["omitted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["digest"].as_str().unwrap())
            .collect();
        for m in &new_set[0].manifests {
            assert!(
                omitted.contains(&m.layers[0].digest.as_str()),
                "{name}: base layer not left out"
            );
            let base_file = out.join("blobs/sha256").join(&m.layers[0].digest[7..]);
            assert!(!base_file.exists(), "{name}: base layer written");
        }
        airlock().arg("verify").arg(&out).assert().success();
    }
}
