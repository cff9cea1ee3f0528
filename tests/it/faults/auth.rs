//! Credentials: bearer tokens from a token server (right, wrong, expiring),
//! redirects that must not carry them, and Basic auth from each place
//! airlock reads credentials from.

use base64::Engine as _;

use super::{LAYER, Work, assert_exported, failed_cleanly, stderr, stdout};
use crate::support::faulty::{Fault, Faulty, Listener, Match, TokenAuth};
use crate::support::images::{self, PushedImage};
use crate::support::registry::{Registry, RegistryOptions};

const USER: &str = "carol";
const PASSWORD: &str = "tok3n-pass-51d2";

fn image(reg: &Registry, repo: &str, seed: u64) -> PushedImage {
    images::push_multiarch_oci(reg, repo, "v1", seed, &["linux/amd64"], LAYER)
}

/// `airlock export --username USER --password-stdin` with `password` fed
/// on stdin, plus `args`.
fn export_with_password(work: &Work, password: &str, args: &[&str]) -> assert_cmd::assert::Assert {
    work.airlock()
        .args([
            "export",
            "--plain-http",
            "--username",
            USER,
            "--password-stdin",
        ])
        .arg("-o")
        .arg(work.bundle())
        .args(args)
        .write_stdin(format!("{password}\n"))
        .assert()
}

#[test]
fn token_auth_with_a_password_on_stdin_exports_the_image() {
    let reg = Registry::start();
    let proxy = Faulty::with_token_auth(&reg, TokenAuth::new(USER, PASSWORD));
    let img = image(&reg, "team/private", 21);
    let work = Work::new();

    export_with_password(&work, PASSWORD, &[&proxy.reference(&img)]).success();

    assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    assert!(proxy.tokens_issued() >= 1);
    // Everything that got content carried one of our tokens.
    let log = proxy.log();
    let served: Vec<_> = log
        .iter()
        .filter(|r| r.path.contains("/team/private/"))
        .collect();
    assert!(served.len() >= 5, "{served:?}");
    for r in served {
        assert_eq!(r.authorization.as_deref(), Some("Bearer"), "{r:?}");
        // Looking for referrers (API, fallback tag, cosign tags) finds none.
        let lookup = r.path.contains("/referrers/") || r.path.contains("/manifests/sha256-");
        assert!(r.status == 200 || (lookup && r.status == 404), "{r:?}");
    }
    let token_requests = log.iter().filter(|r| r.path.starts_with("/token"));
    for r in token_requests {
        assert_eq!(r.authorization.as_deref(), Some("Basic"), "{r:?}");
    }
}

#[test]
fn a_wrong_password_fails_as_an_authentication_error_and_is_never_printed() {
    let reg = Registry::start();
    let proxy = Faulty::with_token_auth(&reg, TokenAuth::new(USER, PASSWORD));
    let img = image(&reg, "team/locked", 22);
    let work = Work::new();
    let wrong = "wr0ng-Secret-77af";

    let a = export_with_password(&work, wrong, &["-vvv", &proxy.reference(&img)]);
    let out = stdout(&a);
    let err = failed_cleanly(a);

    let line = err
        .lines()
        .find(|l| l.contains(&proxy.reference(&img)))
        .unwrap_or_else(|| panic!("no line names the image:\n{err}"));
    assert!(
        line.contains("authentication") && line.contains("credentials"),
        "{line}"
    );
    // -vvv really was verbose, so the check below covers debug logs too.
    assert!(err.contains("DEBUG"), "{err}");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{wrong}"));
    for secret in [wrong, basic.as_str()] {
        assert!(!err.contains(secret), "stderr shows {secret}:\n{err}");
        assert!(!out.contains(secret), "stdout shows {secret}:\n{out}");
    }
    assert!(!work.bundle().exists());
}

#[test]
fn a_token_that_expires_mid_run_is_renewed() {
    let reg = Registry::start();
    let auth = TokenAuth {
        uses: Some(3),
        ..TokenAuth::new(USER, PASSWORD)
    };
    let proxy = Faulty::with_token_auth(&reg, auth);
    let img = image(&reg, "team/expiring", 23);
    let work = Work::new();

    export_with_password(&work, PASSWORD, &["-j", "1", &proxy.reference(&img)]).success();

    assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    // Six requests at three uses a token: at least one renewal, each after
    // a refused request that carried the worn-out token.
    assert!(proxy.tokens_issued() >= 2, "{}", proxy.tokens_issued());
    let log = proxy.log();
    let refused = log
        .iter()
        .position(|r| r.status == 401 && r.authorization.as_deref() == Some("Bearer"))
        .expect("no request was refused for an expired token");
    assert!(
        log[refused..]
            .iter()
            .any(|r| r.path.starts_with("/token") && r.status == 200),
        "{log:?}"
    );
}

#[test]
fn a_failed_auth_probe_is_asked_again_and_no_password_goes_as_basic() {
    let reg = Registry::start();
    let proxy = Faulty::with_token_auth(&reg, TokenAuth::new(USER, PASSWORD));
    let img = image(&reg, "team/probe", 27);
    // A 503 from in front of the registry names no challenge: it says
    // nothing about how to authenticate.
    let probe = Match::path_is("/v2/");
    proxy.first(1, probe.clone(), Fault::ServerError(503));
    let work = Work::new();

    export_with_password(&work, PASSWORD, &["-j", "1", &proxy.reference(&img)]).success();

    assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    let statuses: Vec<u16> = proxy.requests(&probe).iter().map(|r| r.status).collect();
    assert_eq!(statuses[..2], [503, 401]);
    for r in proxy.requests(&Match::path_contains("/team/probe/")) {
        assert_eq!(r.authorization.as_deref(), Some("Bearer"), "{r:?}");
    }
}

#[test]
fn a_token_server_that_fails_for_a_moment_is_asked_again() {
    let reg = Registry::start();
    let proxy = Faulty::with_token_auth(&reg, TokenAuth::new(USER, PASSWORD));
    let img = image(&reg, "team/busyauth", 26);
    let token = Match::path_contains("/token?");
    proxy.first(1, token.clone(), Fault::ServerError(503));
    proxy.first(1, token.clone(), Fault::too_many_requests("0"));
    let work = Work::new();

    export_with_password(&work, PASSWORD, &[&proxy.reference(&img)]).success();

    assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    let statuses: Vec<u16> = proxy.requests(&token).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 429, 200]);
}

#[test]
fn redirected_blob_reads_reach_the_mirror_without_credentials() {
    let reg = Registry::start();
    let proxy = Faulty::with_token_auth(&reg, TokenAuth::new(USER, PASSWORD));
    let img = image(&reg, "team/cdn", 24);
    let blobs = Match::path_contains("/blobs/sha256:").method("GET");
    proxy.always(blobs.clone(), Fault::RedirectTo(proxy.mirror_url()));
    let work = Work::new();

    export_with_password(&work, PASSWORD, &[&proxy.reference(&img)]).success();

    assert_exported(&work.bundle(), &proxy.reference(&img), &img);
    let asked = proxy.requests(&blobs);
    assert_eq!(asked.len(), img.blob_digests().len(), "{asked:?}");
    for r in &asked {
        assert_eq!(
            (r.status, r.authorization.as_deref()),
            (302, Some("Bearer"))
        );
    }
    let mirror = proxy.mirror_requests();
    assert_eq!(mirror.len(), asked.len(), "{mirror:?}");
    for r in &mirror {
        assert_eq!(r.listener, Listener::Mirror);
        assert_eq!(
            r.authorization, None,
            "the mirror was sent credentials: {r:?}"
        );
        assert_eq!(r.status, 200);
    }
}

#[test]
fn basic_auth_credentials_come_from_flags_docker_config_and_podman_auth_file() {
    let (user, pass) = ("dave", "basic-pass-0c1e");
    let reg = Registry::start_with(RegistryOptions {
        htpasswd: Some((user.into(), pass.into())),
        ..RegistryOptions::default()
    });
    let img = image(&reg, "team/basic", 25);
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let config = serde_json::json!({ "auths": { reg.host(): { "auth": auth } } }).to_string();

    // Without credentials the registry refuses, so each success below is
    // the credentials' doing.
    let work = Work::new();
    let err = failed_cleanly(work.export(&[&img.reference()]));
    assert!(
        err.contains(&img.reference()) && err.contains("401"),
        "{err}"
    );

    let work = Work::new();
    work.airlock()
        .args([
            "export",
            "--plain-http",
            "--username",
            user,
            "--password-stdin",
            "-o",
        ])
        .arg(work.bundle())
        .arg(img.reference())
        .write_stdin(pass)
        .assert()
        .success();
    assert_exported(&work.bundle(), &img.reference(), &img);

    let work = Work::new();
    let docker = work.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(docker.join("config.json"), &config).unwrap();
    work.airlock()
        .env("DOCKER_CONFIG", &docker)
        .args(["export", "--plain-http", "-o"])
        .arg(work.bundle())
        .arg(img.reference())
        .assert()
        .success();
    assert_exported(&work.bundle(), &img.reference(), &img);

    let work = Work::new();
    let podman = work.path().join("auth.json");
    std::fs::write(&podman, &config).unwrap();
    work.airlock()
        .env("REGISTRY_AUTH_FILE", &podman)
        .args(["export", "--plain-http", "-o"])
        .arg(work.bundle())
        .arg(img.reference())
        .assert()
        .success();
    assert_exported(&work.bundle(), &img.reference(), &img);
}

#[test]
fn https_spoken_to_a_plain_http_registry_says_to_pass_plain_http() {
    let reg = Registry::start();
    let work = Work::new();
    let reference = format!("{}/team/none:v1", reg.host());

    let a = work
        .airlock()
        .args(["export", "-o"])
        .arg(work.bundle())
        .arg(&reference)
        .assert();
    let err = failed_cleanly(a);

    let line = err.lines().find(|l| l.contains(&reference)).unwrap_or(&err);
    assert!(line.contains("pass --plain-http"), "{err}");
}

#[test]
fn credentials_come_from_a_docker_credential_helper() {
    use std::os::unix::fs::PermissionsExt;
    let (user, pass) = ("erin", "helper-pass-5d2a");
    let reg = Registry::start_with(RegistryOptions {
        htpasswd: Some((user.into(), pass.into())),
        ..RegistryOptions::default()
    });
    let img = image(&reg, "team/helped", 26);
    let work = Work::new();

    // A credential helper as docker runs them: `get` reads the server on
    // stdin and prints the secret as JSON.
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-airlocktest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{pass}\"}}' \"$server\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let docker = work.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let config = serde_json::json!({ "credHelpers": { reg.host(): "airlocktest" } });
    std::fs::write(docker.join("config.json"), config.to_string()).unwrap();

    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let a = work
        .airlock()
        .env("DOCKER_CONFIG", &docker)
        .env("PATH", path)
        .args(["export", "--plain-http", "-vv", "-o"])
        .arg(work.bundle())
        .arg(img.reference())
        .assert()
        .success();
    assert_exported(&work.bundle(), &img.reference(), &img);
    let out = format!("{}{}", stdout(&a), stderr(&a));
    assert!(!out.contains(pass), "the helper's secret was printed");
}
