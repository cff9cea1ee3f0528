//! Image references as people write them, normalised as docker does.
//!
//! Parsing follows the distribution reference grammar: `alpine` is
//! `docker.io/library/alpine:latest`. A reference with both a tag and a
//! digest is fetched by the digest and named by the tag.
//!
//! The grammar is checked by hand, not with `oci_client::Reference`: that
//! parser compiles a Unicode regular expression on first use, which took
//! 24 ms of every run here (8% of a 320 MB export, measured), and it
//! answers every mistake with "invalid reference format". This one names
//! the part at fault and is tested against oci-client's parser
//! (`agrees_with_oci_client` below).

use std::fmt;

use crate::digest::{Digest, DigestError};

/// A reference that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid image reference {input:?}: {reason}")]
    Invalid { input: String, reason: String },
    #[error("invalid image reference {input:?}")]
    Digest {
        input: String,
        #[source]
        source: DigestError,
    },
    #[error("invalid target {input:?}: expected REGISTRY[/PREFIX], e.g. mirror.local:5000/offline")]
    Target { input: String },
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses a reference such as `alpine:3.20` or `host:5000/app@sha256:..`.
    pub fn parse(input: &str) -> Result<ImageRef, ReferenceError> {
        let parts = grammar::split(input.trim()).map_err(|reason| ReferenceError::Invalid {
            input: input.to_string(),
            reason: reason.to_string(),
        })?;
        let digest = parts
            .digest
            .map(|d| d.parse::<Digest>())
            .transpose()
            .map_err(|source| ReferenceError::Digest {
                input: input.to_string(),
                source,
            })?;
        Ok(ImageRef {
            registry: parts.registry.to_string(),
            repository: parts.repository,
            tag: parts.tag.map(str::to_string),
            digest,
        })
    }

    /// Builds a reference from its parts (the parts are trusted).
    pub fn from_parts(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<Digest>,
    ) -> ImageRef {
        ImageRef {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        }
    }

    /// The registry as written in names (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host the registry API is served from.
    pub fn api_host(&self) -> &str {
        match self.registry.as_str() {
            // Docker Hub's API does not live at the name people use.
            "docker.io" => "registry-1.docker.io",
            other => other,
        }
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry for: the digest when there is one.
    pub fn fetch_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The name recorded in a bundle: `registry/repo:tag`, or
    /// `registry/repo@digest` for a digest-only reference.
    pub fn name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}/{}:{}", self.registry, self.repository, t),
            (None, Some(d)) => format!("{}/{}@{}", self.registry, self.repository, d),
            (None, None) => format!("{}/{}:latest", self.registry, self.repository),
        }
    }

    /// The same reference pinned to `digest`, keeping the tag as the name.
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository and tag or digest under another registry and
    /// repository prefix.
    pub fn retarget(&self, target: &Target) -> ImageRef {
        let repository = match &target.prefix {
            Some(prefix) => format!("{prefix}/{}", self.repository),
            None => self.repository.clone(),
        };
        ImageRef {
            registry: target.registry.clone(),
            repository,
            tag: self.tag.clone(),
            digest: self.digest.clone(),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Where an import goes: a registry and an optional repository prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub registry: String,
    pub prefix: Option<String>,
}

impl Target {
    /// Parses `mirror.local:5000` or `mirror.local:5000/offline/team`.
    pub fn parse(input: &str) -> Result<Target, ReferenceError> {
        let bad = || ReferenceError::Target {
            input: input.to_string(),
        };
        let trimmed = input.trim().trim_end_matches('/');
        let (registry, prefix) = match trimmed.split_once('/') {
            Some((r, p)) => (r, Some(p)),
            None => (trimmed, None),
        };
        if registry.is_empty() || registry.contains(['@', ' ']) {
            return Err(bad());
        }
        if let Some(p) = prefix {
            // A prefix must itself be a valid repository path; check it by
            // parsing a reference made of it.
            let probe = format!("{registry}/{p}/x:latest");
            if p.is_empty() || p.contains(':') || grammar::split(&probe).is_err() {
                return Err(bad());
            }
        }
        Ok(Target {
            registry: registry.to_string(),
            prefix: prefix.map(str::to_string),
        })
    }
}

/// The distribution reference grammar, as `reference/regexp.go` in
/// distribution and oci-spec's `REFERENCE_REGEXP` state it:
///
/// ```text
/// reference  := name [ ":" tag ] [ "@" digest ]
/// name       := [ domain "/" ] path
/// domain     := domain-component { "." domain-component } [ ":" port ]
/// path       := path-component { "/" path-component }
/// path-component := [a-z0-9]+ { separator [a-z0-9]+ }
/// separator  := "." | "_" | "__" | "-"+
/// tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
/// digest     := algorithm ":" hex{32,}
/// ```
///
/// Tags are ASCII, as docker has them (oci-spec's `\w` also takes other
/// Unicode letters, which no registry accepts in a URL path).
mod grammar {
    const NAME_MAX: usize = 255;

    pub struct Parts<'a> {
        pub registry: &'a str,
        pub repository: String,
        pub tag: Option<&'a str>,
        pub digest: Option<&'a str>,
    }

    pub fn split(input: &str) -> Result<Parts<'_>, &'static str> {
        if input.is_empty() {
            return Err("the reference is empty");
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (input, None),
        };
        if let Some(d) = digest {
            check_digest(d)?;
        }
        // A tag follows the last ':' after the last '/'; a ':' before that
        // '/' can only be a port.
        let last_segment = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_segment..].rfind(':') {
            Some(i) => (
                &rest[..last_segment + i],
                Some(&rest[last_segment + i + 1..]),
            ),
            None => (rest, None),
        };
        if let Some(t) = tag {
            check_tag(t)?;
        }
        let (registry, path) = split_domain(name)?;
        let repository = match registry {
            "docker.io" if !path.contains('/') => format!("library/{path}"),
            _ => path.to_string(),
        };
        if repository.len() > NAME_MAX {
            return Err("the repository name is longer than 255 characters");
        }
        let tag = match (tag, digest) {
            (None, None) => Some("latest"),
            (tag, _) => tag,
        };
        Ok(Parts {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Docker's rule: the first component names a registry only if it
    /// looks like a host (a '.' or a ':' in it, or `localhost`). Whether the
    /// name is valid is a separate question: it must be a path, or a valid
    /// host followed by a path (so `ho_st.com/app` passes as a path and is
    /// then split as docker splits it).
    fn split_domain(name: &str) -> Result<(&str, &str), &'static str> {
        let first = name.split_once('/');
        let valid = check_path(name).or_else(|path_err| match first {
            Some((host, path)) => check_domain(host).and_then(|()| check_path(path)),
            None => Err(path_err),
        });
        if let Err(e) = valid {
            // Name the part a person most likely got wrong.
            return Err(match first {
                Some((host, path)) if looks_like_host(host) => check_domain(host)
                    .and_then(|()| check_path(path))
                    .err()
                    .unwrap_or(e),
                _ => e,
            });
        }
        let (registry, path) = match first {
            Some((host, path)) if looks_like_host(host) => (host, path),
            _ => ("docker.io", name),
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            // `Team/app`: `Team` passes as a host name in the grammar, but
            // is not taken as one, so it is part of the repository.
            return Err("the repository name must be lowercase");
        }
        let registry = if registry == "index.docker.io" {
            "docker.io"
        } else {
            registry
        };
        Ok((registry, path))
    }

    fn looks_like_host(component: &str) -> bool {
        component.contains(['.', ':']) || component == "localhost"
    }

    fn check_domain(domain: &str) -> Result<(), &'static str> {
        const BAD: &str = "the registry is not a valid host[:port]";
        let (host, port) = match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        };
        if let Some(p) = port
            && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(BAD);
        }
        let component_ok = |c: &str| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        };
        if host.split('.').all(component_ok) {
            Ok(())
        } else {
            Err(BAD)
        }
    }

    fn check_path(path: &str) -> Result<(), &'static str> {
        if path.is_empty() {
            return Err("the repository name is empty");
        }
        if path.split('/').all(path_component_ok) {
            return Ok(());
        }
        if path.bytes().any(|b| b.is_ascii_uppercase())
            && path.to_ascii_lowercase().split('/').all(path_component_ok)
        {
            return Err("the repository name must be lowercase");
        }
        Err(
            "the repository name is not valid (lowercase letters, digits, and . _ __ - between them, / between components)",
        )
    }

    fn path_component_ok(component: &str) -> bool {
        let b = component.as_bytes();
        let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        // Between runs of [a-z0-9]: ".", "_", "__" or any number of "-".
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let ok = match &b[start..i] {
                b"." | b"_" | b"__" => true,
                sep => sep.iter().all(|&x| x == b'-'),
            };
            if !ok {
                return false;
            }
        }
        true
    }

    fn check_tag(tag: &str) -> Result<(), &'static str> {
        let b = tag.as_bytes();
        let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
        if !b.is_empty()
            && b.len() <= 128
            && word(b[0])
            && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
        {
            Ok(())
        } else {
            Err("the tag is not valid (up to 128 letters, digits, _ . -, not starting with . or -)")
        }
    }

    fn check_digest(digest: &str) -> Result<(), &'static str> {
        const BAD: &str = "the digest is not ALGORITHM:HEX";
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return Err(BAD);
        };
        let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphabetic()
                && b.iter().all(|x| x.is_ascii_alphanumeric())
        });
        if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BAD);
        }
        let want = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err("the digest algorithm is not sha256, sha384 or sha512"),
        };
        if hex.len() != want {
            return Err("the digest has the wrong length for its algorithm");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises_docker_hub_short_names() {
        let r = ImageRef::parse("alpine:3.20").unwrap();
        assert_eq!(r.name(), "docker.io/library/alpine:3.20");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = ImageRef::parse("docker.io/library/alpine").unwrap();
        assert_eq!(r.name(), "docker.io/library/alpine:latest");
    }

    #[test]
    fn digest_wins_and_tag_names() {
        let r = ImageRef::parse(&format!("host:5000/app:1.2@{D}")).unwrap();
        assert_eq!(r.fetch_reference(), D);
        assert_eq!(r.name(), "host:5000/app:1.2");
        let r = ImageRef::parse(&format!("registry.example:5000/team/app@{D}")).unwrap();
        assert_eq!(r.name(), format!("registry.example:5000/team/app@{D}"));
    }

    #[test]
    fn rejects_upper_case_digest() {
        let upper = format!("host/app@sha256:{}", D[7..].to_uppercase());
        assert!(ImageRef::parse(&upper).is_err());
        assert!(ImageRef::parse("Host/UPPER:tag").is_err());
    }

    #[test]
    fn agrees_with_oci_client_on_known_cases() {
        let long = "a".repeat(250);
        for case in [
            "busybox",
            "test.com:tag",
            "test.com:5000",
            "test.com/repo:tag",
            "test:5000/repo",
            "localhost/app",
            "localhost:5000/a/b/c:1",
            "index.docker.io/app",
            "index.docker.io/team/app",
            "lowercase:Uppercase",
            "Uppercase/app",
            "host/UPPER",
            "b.gcr.io/test.example.com/my-app:test.example.com",
            "xn--n3h.com/myimage:xn--n3h.com",
            "foo_bar.com:8080",
            "foo/foo_bar.com:8080",
            "a--b/c__d/e.f_g",
            "a___b",
            "a..b",
            "-a",
            "a-",
            ":tag",
            "app:",
            "app@",
            "app:-tag",
            "app:.tag",
            "host:/app",
            "host:50a0/app",
            "-host.com/app",
            "host-.com/app",
            "ho_st.com/app",
            "a/b@sha256:",
            "a@md5:ffffffffffffffffffffffffffffffff",
            "a@sha256:ffff",
            "a:b:c",
            "a@b@c",
            "a//b",
            "/a",
            "a/",
            &format!("{long}/abcde"),
            &format!("{long}/abcdef"),
            &format!("{long}x"),
            &format!("app:{}", "t".repeat(128)),
            &format!("app:{}", "t".repeat(129)),
        ] {
            agree(case).unwrap_or_else(|e| panic!("{case}: {e}"));
        }
    }

    #[test]
    fn names_the_part_at_fault() {
        let err = |s: &str| ImageRef::parse(s).unwrap_err().to_string();
        assert!(err("host.example/Team/App:1").contains("must be lowercase"));
        assert!(err("host.example/app:-1").contains("tag"));
        assert!(err("host.example/app@sha999:abc").contains("digest"));
        assert!(err("-host.example/app").contains("registry"));
        assert!(err("").contains("empty"));
        assert!(err("Team/app").contains("must be lowercase"));
    }

    #[test]
    fn retargets_under_prefix() {
        let r = ImageRef::parse("src.example:5000/team/app:1.2").unwrap();
        let t = Target::parse("mirror.local:5000/offline").unwrap();
        assert_eq!(
            r.retarget(&t).name(),
            "mirror.local:5000/offline/team/app:1.2"
        );
        let t = Target::parse("mirror.local:5000").unwrap();
        assert_eq!(r.retarget(&t).name(), "mirror.local:5000/team/app:1.2");
        assert!(Target::parse("mirror.local:5000/Off Line").is_err());
        assert!(Target::parse("").is_err());
    }
}

/// Checks `input` against oci-client's parser: both accept it and agree on
/// the parts, or both refuse it (one known difference aside).
#[cfg(test)]
fn agree(input: &str) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prelude::*;
    let theirs = oci_client::Reference::try_from(input);
    let ours = grammar::split(input);
    match (theirs, ours) {
        // oci-client lets `Upper/app` through as a Docker Hub repository
        // with capitals (its first component passes as a host); docker
        // refuses it, and so do we.
        (Ok(t), Err(_)) if t.repository().bytes().any(|b| b.is_ascii_uppercase()) => {}
        (Ok(t), Ok(o)) => {
            prop_assert_eq!(t.registry(), o.registry);
            prop_assert_eq!(t.repository(), o.repository.as_str());
            prop_assert_eq!(t.tag(), o.tag);
            prop_assert_eq!(t.digest(), o.digest);
        }
        (Err(_), Err(_)) => {}
        (t, o) => {
            prop_assert!(
                false,
                "{input:?}: oci-client {:?}, airlock {:?}",
                t.map(|r| r.to_string()),
                o.map(|p| format!("{}/{}", p.registry, p.repository))
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,300}") {
            let _ = ImageRef::parse(&s);
            let _ = Target::parse(&s);
        }

        /// The hand-written grammar accepts what oci-client's regular
        /// expression accepts and splits it the same way, on inputs built
        /// from the characters that matter.
        #[test]
        fn agrees_with_oci_client(s in "[a-zA-Z0-9._:/@-]{0,40}|[a-z0-9.]{1,12}(:[0-9]{1,5})?/[a-z0-9._-]{1,20}(/[a-z0-9_-]{1,6}){0,2}(:[A-Za-z0-9_.-]{1,10})?(@sha(256|384|512):[0-9a-fA-F]{30,130})?") {
            agree(&s)?;
        }

        #[test]
        fn names_parse_back_to_themselves(
            host in "[a-z][a-z0-9]{0,10}\\.example(:[1-9][0-9]{1,4})?",
            path in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}",
            tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
        ) {
            let input = format!("{host}/{path}:{tag}");
            let r = ImageRef::parse(&input).unwrap();
            let again = ImageRef::parse(&r.name()).unwrap();
            prop_assert_eq!(again.name(), r.name());
            prop_assert_eq!(r.tag(), Some(tag.as_str()));
        }
    }
}
