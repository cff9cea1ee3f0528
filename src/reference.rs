//! Image references as people write them, normalised as docker does.
//!
//! Parsing follows the distribution reference grammar (through `oci-spec`):
//! `alpine` is `docker.io/library/alpine:latest`. A reference with both a
//! tag and a digest is fetched by the digest and named by the tag.

use std::fmt;

use oci_client::Reference;

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
        let trimmed = input.trim();
        let parsed = Reference::try_from(trimmed).map_err(|e| ReferenceError::Invalid {
            input: input.to_string(),
            reason: e.to_string(),
        })?;
        let digest = parsed
            .digest()
            .map(|d| d.parse::<Digest>())
            .transpose()
            .map_err(|source| ReferenceError::Digest {
                input: input.to_string(),
                source,
            })?;
        Ok(ImageRef {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            tag: parsed.tag().map(str::to_string),
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
            if p.is_empty() || p.contains(':') || Reference::try_from(probe.as_str()).is_err() {
                return Err(bad());
            }
        }
        Ok(Target {
            registry: registry.to_string(),
            prefix: prefix.map(str::to_string),
        })
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
