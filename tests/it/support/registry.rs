//! A throw-away CNCF distribution (`docker-registry`) instance per test.
//!
//! Each [`Registry`] owns its own storage directory and port on 127.0.0.1, so
//! tests can run in parallel without seeing each other's repositories.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long to wait for `GET /v2/` to answer after spawning the server.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times to pick a fresh port when the chosen one turns out taken.
const PORT_ATTEMPTS: usize = 8;

/// Response header carrying a per-instance token, set via `http.headers`.
const TOKEN_HEADER: &str = "X-Airlock-Test-Registry";

/// Optional features of a test registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Accept pushes of Docker schema 1 (signed) manifests.
    pub schema1: bool,
    /// Require HTTP basic auth with this `(user, password)` pair.
    pub htpasswd: Option<(String, String)>,
}

/// A running `docker-registry serve` child process with private storage.
///
/// Dropping it kills the process and deletes the storage.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    // Holds config.yml, the storage root, the htpasswd file and server logs.
    dir: TempDir,
    options: RegistryOptions,
    // Sent back by the server on every response, so that readiness polling
    // can tell our instance apart from anything else that grabbed the port.
    token: String,
}

impl Registry {
    /// Starts a plain registry: no auth, schema 1 disabled.
    pub fn start() -> Registry {
        Registry::start_with(RegistryOptions::default())
    }

    /// Starts a registry with the given options and waits until it answers.
    pub fn start_with(options: RegistryOptions) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("airlock-registry-")
            .tempdir()
            .expect("create registry temp dir");
        fs::create_dir_all(dir.path().join("storage")).expect("create storage dir");
        if let Some((user, pass)) = &options.htpasswd {
            let line = htpasswd_line(user, pass);
            fs::write(dir.path().join("htpasswd"), line).expect("write htpasswd");
        }
        let token = format!(
            "{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        );

        let mut reg = Registry {
            child: None,
            port: 0,
            dir,
            options,
            token,
        };
        let mut last_err = String::new();
        for _ in 0..PORT_ATTEMPTS {
            reg.port = free_port();
            reg.write_config();
            match reg.spawn_and_wait() {
                Ok(()) => return reg,
                Err(StartError::PortTaken(msg)) => last_err = msg,
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!("registry could not find a free port after {PORT_ATTEMPTS} tries: {last_err}");
    }

    /// `127.0.0.1:PORT`, as used in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`, the base for API calls.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The port the registry listens on; stable across [`Registry::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The options the registry was started with.
    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// Basic-auth credentials, if the registry requires them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.options
            .htpasswd
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Root of the registry's filesystem storage driver.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Whether the child process is currently running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// What the server wrote to stderr so far (its error log).
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Kills the server but keeps its storage, e.g. to simulate an outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and storage and waits for it.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                // Someone else may briefly hold our old port; we cannot move,
                // because callers keep using the old host string.
                Err(StartError::PortTaken(_)) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(200));
                }
                Err(StartError::PortTaken(msg)) | Err(StartError::Fatal(msg)) => {
                    panic!("registry restart on port {} failed: {msg}", self.port)
                }
            }
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn write_config(&self) {
        let storage = self.storage_dir();
        let mut yaml = format!(
            "version: 0.1\n\
             log:\n  \
               level: error\n  \
               accesslog:\n    \
                 disabled: true\n\
             storage:\n  \
               filesystem:\n    \
                 rootdirectory: {storage}\n  \
               delete:\n    \
                 enabled: true\n  \
               maintenance:\n    \
                 uploadpurging:\n      \
                   enabled: false\n\
             http:\n  \
               addr: 127.0.0.1:{port}\n  \
               headers:\n    \
                 {header}: [\"{token}\"]\n",
            header = TOKEN_HEADER,
            storage = yaml_path(&storage),
            port = self.port,
            token = self.token,
        );
        if self.options.schema1 {
            yaml.push_str("compatibility:\n  schema1:\n    enabled: true\n");
        }
        if self.options.htpasswd.is_some() {
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: airlock-test\n    path: {}\n",
                yaml_path(&self.dir.path().join("htpasswd"))
            ));
        }
        fs::write(self.config_path(), yaml).expect("write registry config");
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        // Append, so that logs from before a restart are kept for diagnosis.
        let log = |name: &str| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .unwrap_or_else(|e| panic!("open registry {name}: {e}"))
        };
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .map_err(|e| StartError::Fatal(format!("cannot spawn docker-registry: {e}")))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().ok().flatten() {
                self.child = None;
                let stderr = self.stderr();
                let msg = format!(
                    "docker-registry exited early ({status}) on port {}; stderr:\n{stderr}",
                    self.port
                );
                // Only the newest attempt's bind error means our port is taken.
                let last = stderr.lines().last().unwrap_or_default();
                return Err(if last.contains("address already in use") {
                    StartError::PortTaken(msg)
                } else {
                    StartError::Fatal(msg)
                });
            }
            // With htpasswd enabled an anonymous probe gets 401, which still
            // proves the server is up and serving the API.
            let expected = if self.options.htpasswd.is_some() {
                401
            } else {
                200
            };
            if self.probe() == Some(expected) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(StartError::Fatal(format!(
                    "docker-registry on port {} not ready after {:?}; stderr:\n{}",
                    self.port,
                    READY_TIMEOUT,
                    self.stderr()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Registry {
    /// The status of `GET /v2/` if the answer carries our token, else None.
    ///
    /// Plain HTTP/1.0 over a TcpStream instead of reqwest: `reqwest::blocking`
    /// panics when used inside an async runtime, and this way a Registry can
    /// also be started from `#[tokio::test]` functions.
    fn probe(&self) -> Option<u16> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host());
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = Vec::new();
        // HTTP/1.0 without keep-alive: the server closes after the body.
        stream.read_to_end(&mut response).ok()?;
        let text = String::from_utf8_lossy(&response);
        let (head, _) = text.split_once("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let ours = lines.any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case(TOKEN_HEADER) && value.trim() == self.token
            })
        });
        ours.then_some(status)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

enum StartError {
    PortTaken(String),
    Fatal(String),
}

/// Asks the kernel for an unused port. It is released before the registry
/// binds it, so a clash is possible and handled by the caller's retry.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn yaml_path(p: &Path) -> String {
    // Temp paths contain no quotes or backslashes; quoting guards against
    // YAML reading odd characters (e.g. ':' or '#') as syntax.
    format!("\"{}\"", p.display())
}

/// One htpasswd line with a bcrypt hash, which is the only scheme
/// distribution accepts. Prefers apache's `htpasswd`; falls back to Perl's
/// `crypt`, which on Debian goes through libxcrypt and knows `$2b$`.
fn htpasswd_line(user: &str, pass: &str) -> String {
    if let Ok(out) = Command::new("htpasswd")
        .args(["-nbB", "-C", "4", user, pass])
        .output()
        && out.status.success()
    {
        return String::from_utf8(out.stdout)
            .expect("htpasswd output is UTF-8")
            .trim()
            .to_string()
            + "\n";
    }
    // Cost 4 (the minimum) keeps each authenticated request fast; the salt is
    // fixed because nothing here needs it to be secret.
    let out = Command::new("perl")
        .args([
            "-e",
            "print crypt($ARGV[0], $ARGV[1])",
            pass,
            "$2b$04$airlocktestsaltairlock",
        ])
        .output()
        .expect("neither htpasswd nor perl is available to make a bcrypt hash");
    let hash = String::from_utf8(out.stdout).expect("perl output is UTF-8");
    assert!(
        out.status.success() && hash.starts_with("$2b$04$"),
        "perl crypt() cannot make bcrypt hashes here (got {hash:?}); install apache2-utils"
    );
    format!("{user}:{hash}\n")
}
