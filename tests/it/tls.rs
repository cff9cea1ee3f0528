//! HTTPS registries: certificate checks, `--ca-file` and `--insecure`
//! (issue #2's connection options).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::images::{self, Flavour};
use crate::support::registry::Registry;
use crate::support::tools::airlock;

/// A distribution registry speaking HTTPS over `storage`, with a
/// self-signed certificate for 127.0.0.1.
struct TlsRegistry {
    child: Child,
    port: u16,
    cert: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsRegistry {
    fn start(storage: &Path) -> TlsRegistry {
        let dir = tempfile::tempdir().unwrap();
        // A CA, and a server certificate it signed: webpki refuses a
        // self-signed certificate as a server's own.
        let p = |n: &str| dir.path().join(n);
        let (cert, key) = (p("ca.pem"), p("server.key"));
        let run = |args: &[&str]| {
            let ok = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "openssl {args:?} failed");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=airlock test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        let server_cert = p("server.pem");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}}}\n\
                 http: {{addr: 127.0.0.1:{port}, tls: {{certificate: {}, key: {}}}}}\n",
                storage.display(),
                server_cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        loop {
            let ok = Command::new("curl")
                .args([
                    "-fsk",
                    "-o",
                    "/dev/null",
                    &format!("https://127.0.0.1:{port}/v2/"),
                ])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "TLS registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsRegistry {
            child,
            port,
            cert,
            _dir: dir,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}

#[test]
fn certificates_are_checked_unless_trusted_or_waived() {
    let plain = Registry::start();
    let img = images::push_single(&plain, "tls/app", "1", 61, &[20_000], Flavour::Oci);
    let tls = TlsRegistry::start(&plain.storage_dir());
    let reference = format!("{}/tls/app:1", tls.host());
    let work = tempfile::tempdir().unwrap();
    let export = |dir: &str, extra: &[&str]| {
        airlock()
            .args(["export", "-q", "-o"])
            .arg(work.path().join(dir))
            .args(extra)
            .arg(&reference)
            .assert()
    };

    let a = export("untrusted", &[]).code(1);
    assert!(stderr(&a).contains("certificate"), "{}", stderr(&a));

    export("trusted", &["--ca-file", tls.cert.to_str().unwrap()]).success();
    export("waived", &["--insecure"]).success();
    for dir in ["trusted", "waived"] {
        let index = std::fs::read_to_string(work.path().join(dir).join("index.json")).unwrap();
        assert!(index.contains(&img.digest), "{dir}: {index}");
    }

    let junk = work.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let a = export("junk", &["--ca-file", junk.to_str().unwrap()]).code(2);
    assert!(stderr(&a).contains("junk.pem"), "{}", stderr(&a));

    // Import over HTTPS with the same trust.
    let target_storage = tempfile::tempdir().unwrap();
    let target = TlsRegistry::start(target_storage.path());
    airlock()
        .args(["import", "-q", "--ca-file", target.cert.to_str().unwrap()])
        .arg(work.path().join("trusted"))
        .args(["--to", &target.host()])
        .assert()
        .success();
    let head = Command::new("curl")
        .args(["-fsSI", "--cacert", target.cert.to_str().unwrap()])
        .args(["-H", &format!("Accept: {}", images::OCI_MANIFEST)])
        .arg(format!("https://{}/v2/tls/app/manifests/1", target.host()))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(headers.contains(&img.digest), "{headers}");
}
