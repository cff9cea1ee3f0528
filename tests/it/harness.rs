//! Tests of the test harness itself: if these pass, a failing export or
//! import test points at airlock, not at the fixtures.

use std::io::Read;

use crate::support::images::{self, Flavour, ImageSeed, LayerKind};
use crate::support::layout;
use crate::support::registry::{Registry, RegistryOptions};
use crate::support::tools::{self, Podman};

const PLATFORMS: &[&str] = &["linux/amd64", "linux/arm64", "linux/arm/v7"];
const LAYER: usize = 48 * 1024;

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("valid JSON")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

#[test]
fn builders_are_deterministic_and_seed_sensitive() {
    let a = images::build_multiarch(Flavour::Oci, 7.into(), PLATFORMS, LAYER);
    let b = images::build_multiarch(Flavour::Oci, 7.into(), PLATFORMS, LAYER);
    assert_eq!(a.bytes, b.bytes);
    assert_eq!(a.digest, b.digest);
    for (ma, mb) in a.manifests.iter().zip(&b.manifests) {
        assert_eq!(ma.bytes, mb.bytes);
        assert_eq!(ma.config.bytes, mb.config.bytes);
        assert_eq!(ma.layers, mb.layers);
    }

    let c = images::build_multiarch(Flavour::Oci, 8.into(), PLATFORMS, LAYER);
    assert_ne!(a.digest, c.digest);
    assert_ne!(
        a.manifests[0].layers[0].digest,
        c.manifests[0].layers[0].digest
    );

    // Same base seed: base layers shared per platform, app layers not, and
    // no two platforms share a layer.
    let x = images::build_multiarch(
        Flavour::Oci,
        ImageSeed { base: 1, app: 2 },
        PLATFORMS,
        LAYER,
    );
    let y = images::build_multiarch(
        Flavour::Oci,
        ImageSeed { base: 1, app: 3 },
        PLATFORMS,
        LAYER,
    );
    for (mx, my) in x.manifests.iter().zip(&y.manifests) {
        assert_eq!(mx.layers[0].digest, my.layers[0].digest);
        assert_ne!(mx.layers[1].digest, my.layers[1].digest);
        assert_ne!(mx.config.digest, my.config.digest);
    }
    assert_ne!(
        x.manifests[0].layers[0].digest,
        x.manifests[1].layers[0].digest
    );
}

#[test]
fn layers_hold_normalised_incompressible_tars() {
    let files = [("etc/app.conf", 1000), ("usr/lib/data.bin", 20_000)];
    let gz = images::layer(3, &files, LayerKind::OciGzip);
    assert_eq!(gz.media_type, images::OCI_LAYER_GZIP);
    assert_eq!(gz.size, gz.bytes.len() as u64);
    assert_eq!(gz.digest, tools::sha256_digest(&gz.bytes));
    let tar = gunzip(&gz.bytes);
    assert_eq!(gz.diff_id, tools::sha256_digest(&tar));
    assert!(
        gz.size > 21_000,
        "random data should not compress: {}",
        gz.size
    );

    let mut archive = tar::Archive::new(tar.as_slice());
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        let want_mode = if h.entry_type().is_dir() {
            0o755
        } else {
            0o644
        };
        assert_eq!(h.mode().unwrap(), want_mode);
        seen.push((
            entry.path().unwrap().display().to_string(),
            h.size().unwrap(),
        ));
    }
    let file_entries: Vec<_> = seen.iter().filter(|(p, _)| !p.ends_with('/')).collect();
    assert_eq!(
        file_entries,
        [
            &("etc/app.conf".to_string(), 1000),
            &("usr/lib/data.bin".to_string(), 20_000)
        ]
    );
    assert!(seen.iter().any(|(p, _)| p == "usr/lib/"));

    // Other compressions wrap the very same tar.
    let zst = images::layer(3, &files, LayerKind::OciZstd);
    assert_eq!(zstd::decode_all(zst.bytes.as_slice()).unwrap(), tar);
    assert_eq!(zst.diff_id, gz.diff_id);
    let raw = images::layer(3, &files, LayerKind::OciTar);
    assert_eq!(raw.bytes, tar);
    assert_eq!(raw.digest, raw.diff_id);
    let docker = images::layer(3, &files, LayerKind::DockerGzip);
    assert_eq!(docker.media_type, images::DOCKER_LAYER_GZIP);
    assert_eq!(docker.bytes, gz.bytes);
}

#[test]
fn multiarch_oci_round_trips_byte_for_byte() {
    let reg = Registry::start();
    let img = images::push_multiarch_oci(&reg, "team/multi", "v1", 11, PLATFORMS, LAYER);
    assert_eq!(img.media_type, images::OCI_INDEX);
    assert_eq!(img.index_digest.as_deref(), Some(img.digest.as_str()));
    assert_eq!(img.manifests.len(), 3);
    assert_eq!(img.layer_digests().len(), 6);
    let expected_bytes: u64 = img
        .manifests
        .iter()
        .flat_map(|m| m.blobs())
        .map(|b| b.size)
        .sum();
    assert_eq!(img.total_blob_bytes, expected_bytes);

    let (bytes, content_type, digest) = images::get_manifest(&reg, "team/multi", "v1");
    assert_eq!(bytes, img.bytes);
    assert_eq!(content_type, images::OCI_INDEX);
    assert_eq!(digest, img.digest);
    assert_eq!(tools::skopeo_inspect_raw(&img.docker_ref()), img.bytes);

    let index = json(&bytes);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries[2]["platform"]["variant"], "v7");
    assert_eq!(entries[1]["platform"]["architecture"], "arm64");

    for m in &img.manifests {
        let (bytes, content_type, digest) = images::get_manifest(&reg, "team/multi", &m.digest);
        assert_eq!(
            (bytes, content_type),
            (m.bytes.clone(), images::OCI_MANIFEST.to_string())
        );
        assert_eq!(digest, m.digest);
        let by_digest = format!("docker://{}/team/multi@{}", reg.host(), m.digest);
        assert_eq!(tools::skopeo_inspect_raw(&by_digest), m.bytes);
        for blob in m.blobs() {
            assert!(images::blob_exists(&reg, "team/multi", &blob.digest));
            assert_eq!(
                images::get_blob(&reg, "team/multi", &blob.digest),
                blob.bytes
            );
        }
        let config = json(&m.config.bytes);
        assert_eq!(config["architecture"], m.platform.architecture.as_str());
        assert_eq!(
            config["rootfs"]["diff_ids"][1],
            m.layers[1].diff_id.as_str()
        );
    }
    assert!(!images::blob_exists(
        &reg,
        "team/multi",
        &tools::sha256_digest(b"nope")
    ));
    assert_eq!(images::list_tags(&reg, "team/multi"), ["v1"]);
    assert_eq!(images::catalog(&reg), ["team/multi"]);
    assert!(images::try_get_manifest(&reg, "team/multi", "missing").is_none());
}

#[test]
fn docker_list_and_zstd_image_round_trip() {
    let reg = Registry::start();
    let list = images::push_docker_list(&reg, "dock/list", "latest", 5, &PLATFORMS[..2], LAYER);
    let (bytes, content_type, digest) = images::get_manifest(&reg, "dock/list", "latest");
    assert_eq!(content_type, images::DOCKER_LIST);
    assert_eq!(
        (bytes.as_slice(), digest.as_str()),
        (list.bytes.as_slice(), list.digest.as_str())
    );
    assert_eq!(tools::skopeo_inspect_raw(&list.docker_ref()), list.bytes);
    let amd64 = list.manifest("linux/amd64");
    let (bytes, content_type, _) = images::get_manifest(&reg, "dock/list", &amd64.digest);
    assert_eq!(content_type, images::DOCKER_MANIFEST);
    let doc = json(&bytes);
    assert_eq!(doc["config"]["mediaType"], images::DOCKER_CONFIG);
    assert_eq!(doc["layers"][0]["mediaType"], images::DOCKER_LAYER_GZIP);
    // skopeo cannot put a Docker list into an OCI layout unchanged.
    let dir = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:l", dir.path().join("layout").display());
    let out = tools::skopeo_try(&[
        "copy",
        "--src-tls-verify=false",
        "--all",
        "--preserve-digests",
        &list.docker_ref(),
        &dest,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("preserve digests"));

    let zst = images::push_zstd_image(&reg, "oci/zstd", "z", 9, LAYER);
    let (bytes, content_type, digest) = images::get_manifest(&reg, "oci/zstd", "z");
    assert_eq!(content_type, images::OCI_MANIFEST);
    assert_eq!(
        (bytes.as_slice(), digest.as_str()),
        (zst.bytes.as_slice(), zst.digest.as_str())
    );
    assert_eq!(zst.index_digest, None);
    let types: Vec<String> = json(&bytes)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        [
            images::OCI_LAYER_ZSTD,
            images::OCI_LAYER_ZSTD,
            images::OCI_LAYER_TAR
        ]
    );
    assert_eq!(tools::skopeo_inspect_raw(&zst.docker_ref()), zst.bytes);

    let single = images::push_single(&reg, "dock/single", "s", 4, &[1000, 2000], Flavour::Docker);
    assert_eq!(single.media_type, images::DOCKER_MANIFEST);
    assert_eq!(
        images::get_manifest(&reg, "dock/single", "s").2,
        single.digest
    );
}

#[test]
fn skopeo_copies_into_a_layout_that_umoci_and_oci_image_tool_accept() {
    let reg = Registry::start();
    let multi = images::push_multiarch_oci(&reg, "lay/multi", "v1", 21, PLATFORMS, LAYER);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let oci = |tag: &str| format!("oci:{}:{tag}", layout.display());

    tools::skopeo_copy(
        &multi.docker_ref(),
        &oci("multi"),
        &["--all", "--preserve-digests"],
    );
    let amd64 = multi.manifest("linux/amd64");
    let by_digest = format!("docker://{}/lay/multi@{}", reg.host(), amd64.digest);
    tools::skopeo_copy(&by_digest, &oci("amd64"), &["--preserve-digests"]);

    tools::oci_image_tool_validate(&layout);
    assert_eq!(tools::umoci_ls(&layout), ["amd64", "multi"]);
    assert_eq!(tools::skopeo_inspect_raw(&oci("multi")), multi.bytes);

    let report = layout::check_oci_layout(&layout);
    assert_eq!(report.refs["multi"], multi.digest);
    assert_eq!(report.refs["amd64"], amd64.digest);
    for (digest, size) in multi.blob_sizes() {
        assert_eq!(report.reachable[&digest].1, size, "{digest}");
    }
    for digest in multi.all_manifest_digests() {
        assert!(report.reachable.contains_key(&digest), "manifest {digest}");
    }
    // blobs + 3 manifests + index
    assert_eq!(report.reachable.len(), multi.blob_digests().len() + 4);
    assert!(report.unreferenced().is_empty());

    // Unpack a single-platform image and compare a file with what we built.
    let bundle = dir.path().join("bundle");
    tools::umoci_unpack(&layout, "amd64", &bundle);
    let tar = gunzip(&amd64.layers[1].bytes);
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut checked = 0;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().unwrap().into_owned();
        let mut want = Vec::new();
        entry.read_to_end(&mut want).unwrap();
        let got = std::fs::read(bundle.join("rootfs").join(&path)).unwrap();
        // Compare hashes: a failing assert_eq on megabytes is unreadable.
        assert_eq!(
            tools::sha256_hex(&got),
            tools::sha256_hex(&want),
            "{} differs after unpack",
            path.display()
        );
        checked += 1;
    }
    assert_eq!(checked, 1);
}

#[test]
fn layout_checker_handles_zstd_and_catches_damage() {
    let reg = Registry::start();
    let zst = images::push_zstd_image(&reg, "lay/zstd", "v2", 22, LAYER);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    // Without the accept flag skopeo gzips the uncompressed layer, which
    // changes its digest and makes --preserve-digests fail.
    tools::skopeo_copy(
        &zst.docker_ref(),
        &format!("oci:{}:zstd", layout.display()),
        &[
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
        ],
    );
    let report = layout::check_oci_layout(&layout);
    assert_eq!(report.refs["zstd"], zst.digest);
    assert_eq!(
        report.reachable[&zst.manifests[0].layers[0].digest].0,
        images::OCI_LAYER_ZSTD
    );
    assert_eq!(
        report.total_blob_bytes(),
        zst.total_blob_bytes + zst.bytes.len() as u64
    );

    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    let check = || {
        let layout = layout.clone();
        std::panic::catch_unwind(move || layout::check_oci_layout(&layout)).is_err()
    };
    // An extra blob is tolerated but reported.
    std::fs::write(blob(&tools::sha256_digest(b"stray")), b"stray").unwrap();
    assert_eq!(layout::check_oci_layout(&layout).unreferenced().len(), 1);

    let victim = blob(&zst.manifests[0].layers[2].digest);
    let original = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, b"corrupt").unwrap();
    assert!(check(), "corrupt blob went unnoticed");
    std::fs::remove_file(&victim).unwrap();
    assert!(check(), "missing blob went unnoticed");
    std::fs::write(&victim, &original).unwrap();
    assert!(!check(), "restored layout should pass again");
}

#[test]
fn podman_pulls_pushed_images_over_plain_http() {
    let reg = Registry::start();
    let single = images::push_single(&reg, "pod/single", "v1", 31, &[LAYER], Flavour::Docker);
    let multi = images::push_multiarch_oci(&reg, "pod/multi", "v1", 32, PLATFORMS, LAYER);
    let zst = images::push_zstd_image(&reg, "pod/zstd", "v1", 33, LAYER);
    let podman = Podman::new();

    // podman's image id is the config digest.
    let id = podman.pull(&single.reference());
    assert_eq!(format!("sha256:{id}"), single.manifests[0].config.digest);
    assert_eq!(podman.image_digest(&single.reference()), single.digest);

    // podman resolves the index to this machine's platform, amd64.
    let id = podman.pull(&multi.reference());
    assert_eq!(
        format!("sha256:{id}"),
        multi.manifest("linux/amd64").config.digest
    );

    // zstd and uncompressed layers, pulled by digest.
    let id = podman.pull(&zst.digest_reference());
    assert_eq!(format!("sha256:{id}"), zst.manifests[0].config.digest);

    assert_eq!(
        podman.image_names(),
        [
            format!("{}/pod/multi:v1", reg.host()),
            format!("{}/pod/single:v1", reg.host()),
            format!("{}/pod/zstd:<none>", reg.host()),
        ]
    );
}

#[test]
fn registries_started_in_parallel_are_isolated() {
    let regs: Vec<Registry> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(Registry::start)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ports: Vec<u16> = regs.iter().map(|r| r.port()).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4);
    for (i, reg) in regs.iter().enumerate() {
        images::push_single(
            reg,
            &format!("only/{i}"),
            "t",
            i as u64,
            &[100],
            Flavour::Oci,
        );
    }
    for (i, reg) in regs.iter().enumerate() {
        assert_eq!(images::catalog(reg), [format!("only/{i}")]);
    }
}

#[test]
fn schema1_registry_accepts_v2s1_copies() {
    let src = Registry::start();
    let img = images::push_single(&src, "old/app", "v1", 41, &[4000, 5000], Flavour::Docker);
    let legacy = Registry::start_with(RegistryOptions {
        schema1: true,
        ..Default::default()
    });
    let dest = format!("docker://{}/old/app:v1", legacy.host());
    tools::skopeo_copy(&img.docker_ref(), &dest, &["--format", "v2s1"]);

    let (bytes, content_type, digest) = images::get_manifest(&legacy, "old/app", "v1");
    assert_eq!(content_type, images::DOCKER_SCHEMA1_SIGNED);
    let doc = json(&bytes);
    assert_eq!(doc["schemaVersion"], 1);
    assert_eq!(doc["fsLayers"].as_array().unwrap().len(), 2);
    assert!(doc["signatures"].is_array());
    // For a signed manifest the digest covers the payload without the
    // signature block, so it is not the hash of the served bytes.
    assert!(digest.starts_with("sha256:"));
    assert_ne!(digest, tools::sha256_digest(&bytes));
    for layer in &img.manifests[0].layers {
        assert!(images::blob_exists(&legacy, "old/app", &layer.digest));
    }

    // Without the compatibility switch the same push is refused. --format
    // is needed: left to itself skopeo would fall back to v2s2 and succeed.
    let modern = format!("docker://{}/old/app:v1-schema1", src.host());
    let out = tools::skopeo_try(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--format",
        "v2s1",
        img.docker_ref().as_str(),
        modern.as_str(),
    ]);
    assert!(!out.status.success(), "default registry accepted schema1");
    assert!(images::try_get_manifest(&src, "old/app", "v1-schema1").is_none());
}

#[test]
fn stop_and_restart_keep_port_and_data() {
    let mut reg = Registry::start();
    let img = images::push_single(&reg, "keep/me", "t", 51, &[LAYER], Flavour::Oci);
    let host = reg.host();
    reg.stop();
    assert!(!reg.is_running());
    assert!(
        std::net::TcpStream::connect(&host).is_err(),
        "stopped registry still listening"
    );
    reg.restart();
    assert!(reg.is_running());
    assert_eq!(reg.host(), host);
    let (bytes, _, digest) = images::get_manifest(&reg, "keep/me", "t");
    assert_eq!((bytes, digest), (img.bytes.clone(), img.digest.clone()));
    let layer = &img.manifests[0].layers[0];
    assert_eq!(
        images::get_blob(&reg, "keep/me", &layer.digest),
        layer.bytes
    );
    let storage = reg.storage_dir();
    drop(reg);
    assert!(!storage.exists(), "storage outlived the registry");
}

#[test]
fn htpasswd_registry_requires_credentials() {
    let reg = Registry::start_with(RegistryOptions {
        htpasswd: Some(("alice".into(), "s3cret".into())),
        ..Default::default()
    });
    let anon = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/v2/", reg.url()))
        .send()
        .unwrap();
    assert_eq!(anon.status(), 401);

    // The push client sends the registry's credentials by itself.
    let img = images::push_single(&reg, "priv/app", "v1", 61, &[2000], Flavour::Oci);
    let raw = tools::skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "alice:s3cret",
        &img.docker_ref(),
    ]);
    assert_eq!(raw.stdout, img.bytes);
    let denied = tools::skopeo_try(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "alice:wrong",
        &img.docker_ref(),
    ]);
    assert!(!denied.status.success());
}

#[test]
fn airlock_binary_builds_and_runs() {
    // Holds for the placeholder binary and for a clap CLI alike.
    let out = tools::airlock().arg("--help").output().unwrap();
    assert!(out.status.success(), "airlock --help failed: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("airlock"));
}

/// Pins down distribution 2.8's content negotiation, which export code
/// must work with: without the right `Accept` it rewrites or hides
/// manifests, whether or not schema 1 pushes are enabled.
#[test]
fn distribution_negotiates_manifests_by_accept_header() {
    let reg = Registry::start();
    let list = images::push_docker_list(&reg, "q/list", "l", 1, PLATFORMS, 1000);
    let index = images::push_multiarch_oci(&reg, "q/oci", "o", 1, PLATFORMS, 1000);
    let single = images::push_single(&reg, "q/d", "d", 1, &[1000], Flavour::Docker);
    let fetch = |repo, tag, accept| {
        images::get_manifest_accepting(&reg, repo, tag, accept)
            .map(|m| (m.content_type, m.docker_content_digest))
    };
    let schema1 = images::DOCKER_SCHEMA1_SIGNED.to_string();
    let is_schema1 = |got: Option<(String, String)>, original: &str| {
        let (content_type, digest) = got.expect("manifest served");
        content_type == schema1 && digest != original
    };

    // A v2s2 manifest is converted to schema 1 on the fly for clients
    // that do not list v2s2.
    assert!(is_schema1(fetch("q/d", "d", None), &single.digest));
    assert!(is_schema1(
        fetch("q/d", "d", Some(images::OCI_MANIFEST)),
        &single.digest
    ));
    assert_eq!(
        fetch("q/d", "d", Some(images::DOCKER_MANIFEST)),
        Some((images::DOCKER_MANIFEST.to_string(), single.digest.clone()))
    );
    // A Docker list is replaced by its linux/amd64 child (or a schema 1
    // rendering of it) unless the list type is accepted.
    assert_eq!(
        fetch("q/list", "l", Some(images::DOCKER_MANIFEST)),
        Some((
            images::DOCKER_MANIFEST.to_string(),
            list.manifest("linux/amd64").digest.clone()
        ))
    );
    assert!(is_schema1(fetch("q/list", "l", None), &list.digest));
    // OCI documents are never converted: they are reported missing.
    assert_eq!(fetch("q/oci", "o", None), None);
    assert_eq!(fetch("q/oci", "o", Some(images::DOCKER_MANIFEST)), None);
    assert_eq!(
        fetch("q/oci", "o", Some(images::OCI_INDEX)),
        Some((images::OCI_INDEX.to_string(), index.digest.clone()))
    );

    // Deletion works by digest (storage.delete is enabled).
    assert!(images::delete_manifest(&reg, "q/d", &single.digest));
    assert!(images::try_get_manifest(&reg, "q/d", &single.digest).is_none());
    assert!(!images::delete_manifest(&reg, "q/d", &single.digest));
}
