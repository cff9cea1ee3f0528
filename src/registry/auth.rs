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

/// What a registry's `/v2/` answer asks of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Nothing: anonymous access will do.
    None,
    /// Credentials with every request.
    Basic,
    /// A token from the server at `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value (RFC 9110 section 11.6.1): a scheme,
    /// then `name=value` parameters separated by commas, values quoted or
    /// not. Only the first challenge counts; registries send one.
    pub fn parse(header: &str) -> Challenge {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Challenge::Basic;
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::None;
        }
        let params = challenge_params(rest);
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        match get("realm") {
            Some(realm) => Challenge::Bearer {
                realm,
                service: get("service"),
            },
            None => Challenge::None,
        }
    }
}

/// The `name=value` pairs of a challenge; quoted values may hold commas
/// (a scope does) and backslash escapes.
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next() != Some('=') {
            return out;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
        }
        out.push((name.trim().to_string(), value.trim().to_string()));
    }
}

/// Why no token came back from one try.
#[derive(Debug)]
pub struct TokenFailure {
    /// Worth asking again: a 429 or 5xx, or a lost connection.
    pub transient: bool,
    /// How long the failed answer asked us to wait (`Retry-After`).
    pub retry_after: Option<std::time::Duration>,
    /// Says what failed; never holds what was sent or what the server said.
    pub reason: String,
}

/// The distribution token dance, once: asks `base` (`scheme://host`) how
/// to authenticate and, when it names a token server, asks that server
/// for a token for `scope`, with `creds` when there are any.
///
/// `Ok(None)` means no token is needed (anonymous access, or Basic).
pub async fn fetch_token(
    http: &reqwest::Client,
    base: &str,
    scope: &str,
    creds: Option<&Credentials>,
) -> Result<Option<String>, TokenFailure> {
    let probe = http
        .get(format!("{base}/v2/"))
        .send()
        .await
        .map_err(transport_failure)?;
    let challenge = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(Challenge::parse);
    let (realm, service) = match challenge {
        Some(Challenge::Bearer { realm, service }) => (realm, service),
        Some(_) => return Ok(None),
        // A 5xx from a proxy in front of the registry names no challenge,
        // and tells nothing about what the registry wants.
        None if super::retry::retryable_status(probe.status()) => {
            return Err(status_failure("the registry", probe));
        }
        None => return Ok(None),
    };

    tracing::debug!(
        realm,
        scope,
        with_credentials = creds.is_some(),
        "asking the token server"
    );
    let mut query = vec![("scope", scope.to_string())];
    query.extend(service.map(|s| ("service", s)));
    let mut request = http.get(&realm).query(&query);
    if let Some(c) = creds {
        request = request.basic_auth(&c.username, Some(&c.password));
    }
    let resp = request.send().await.map_err(transport_failure)?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        let reason = if creds.is_some() {
            "the token server refused the credentials. Check them \
             (docker login, --username with --password-stdin)"
        } else {
            "the token server refused anonymous access. Log in \
             (docker login, or --username with --password-stdin)"
        };
        return Err(TokenFailure {
            transient: false,
            retry_after: None,
            reason: reason.to_string(),
        });
    }
    if !status.is_success() {
        return Err(status_failure("the token server", resp));
    }
    #[derive(serde::Deserialize)]
    struct TokenAnswer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let body = resp.bytes().await.map_err(transport_failure)?;
    let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| TokenFailure {
        transient: false,
        retry_after: None,
        reason: format!("the token server's answer is not a token: {e}"),
    })?;
    match answer.token.or(answer.access_token) {
        Some(t) if !t.is_empty() => Ok(Some(t)),
        _ => Err(TokenFailure {
            transient: false,
            retry_after: None,
            reason: "the token server's answer holds no token".to_string(),
        }),
    }
}

fn status_failure(who: &str, resp: reqwest::Response) -> TokenFailure {
    let status = resp.status();
    TokenFailure {
        transient: super::retry::retryable_status(status),
        retry_after: super::retry::retry_after(resp.headers()),
        reason: format!("{who} answered {status}"),
    }
}

fn transport_failure(e: reqwest::Error) -> TokenFailure {
    let e = e.without_url();
    let mut reason = crate::error_chain(&e);
    if reason.contains("InvalidContentType") {
        reason.push_str(". If the registry speaks plain HTTP, pass --plain-http");
    }
    TokenFailure {
        transient: super::retry::retryable_error(&e),
        retry_after: None,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_commas_in_quoted_values() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg.example".into()),
            }
        );
        let c = Challenge::parse(r#"bearer  service=x, realm="http://h/t\"q""#);
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: r#"http://h/t"q"#.into(),
                service: Some("x".into()),
            }
        );
    }

    #[test]
    fn basic_unknown_and_realmless_challenges_need_no_token() {
        assert_eq!(Challenge::parse(r#"Basic realm="reg""#), Challenge::Basic);
        assert_eq!(Challenge::parse("Negotiate"), Challenge::None);
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), Challenge::None);
        assert_eq!(Challenge::parse(""), Challenge::None);
    }
}
