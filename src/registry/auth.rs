//! Credentials, found the way the rest of the ecosystem finds them.
//!
//! Order: `--username`/`--password-stdin`, then `$DOCKER_CONFIG/config.json`
//! (or `~/.docker/config.json`, with `credHelpers` and `credsStore`), then
//! podman's `auth.json` (`$REGISTRY_AUTH_FILE`, or the XDG runtime dir).
//! Secrets live only in [`Credentials`], whose `Debug` hides them.

use std::fmt;

use docker_credential::{CredentialRetrievalError, DockerCredential};

/// A user name and password (or token used as a password).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// Where credentials come from for one run.
#[derive(Debug, Clone, Default)]
pub struct CredentialSource {
    /// Given on the command line; used for every registry of the run.
    pub explicit: Option<Credentials>,
}

impl CredentialSource {
    /// The credentials for `registry` (a host[:port] as in references), or
    /// `None` for anonymous access.
    pub fn lookup(&self, registry: &str) -> Option<Credentials> {
        if let Some(c) = &self.explicit {
            return Some(c.clone());
        }
        let keys: Vec<&str> = if registry == "docker.io" {
            vec![
                "https://index.docker.io/v1/",
                "docker.io",
                "index.docker.io",
            ]
        } else {
            vec![registry]
        };
        for key in keys {
            for lookup in [
                docker_credential::get_credential as fn(&str) -> _,
                docker_credential::get_podman_credential,
            ] {
                match lookup(key) {
                    Ok(DockerCredential::UsernamePassword(username, password)) => {
                        return Some(Credentials { username, password });
                    }
                    Ok(DockerCredential::IdentityToken(_)) => {
                        tracing::warn!(
                            registry,
                            "identity tokens in the credential store are not supported; \
                             using anonymous access. Pass --username and --password-stdin instead."
                        );
                        return None;
                    }
                    // A missing config file comes back as a read error, not as
                    // "not found"; both mean: nothing stored here.
                    Err(CredentialRetrievalError::ConfigNotFound)
                    | Err(CredentialRetrievalError::NoCredentialConfigured)
                    | Err(CredentialRetrievalError::ConfigReadError) => {}
                    // A helper's output may hold secrets: name the helper only.
                    Err(CredentialRetrievalError::HelperFailure { helper, .. }) => {
                        tracing::warn!(registry, helper, "credential helper failed");
                    }
                    Err(e) => {
                        tracing::warn!(registry, "could not read stored credentials: {e}");
                    }
                }
            }
        }
        None
    }
}
