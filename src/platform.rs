//! Platforms (`os/arch[/variant]`) and how a filter matches an index entry.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A platform string that is not `os/arch[/variant]`.
#[derive(Debug, thiserror::Error)]
#[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/arm64 or linux/arm/v7")]
pub struct PlatformError(pub String);

/// The platform of an index entry or of a filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `linux/amd64`, `linux/arm/v7`.
    pub fn parse(input: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = input.trim().split('/').collect();
        let ok = |s: &str| {
            s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(PlatformError(input.to_string()));
        }
        Ok(Platform {
            os: parts[0].to_lowercase(),
            architecture: parts[1].to_lowercase(),
            variant: parts.get(2).map(|v| v.to_lowercase()),
        })
    }

    /// Parses a list of filters given as repeated flags and/or commas.
    pub fn parse_list(inputs: &[String]) -> Result<Vec<Platform>, PlatformError> {
        inputs
            .iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.trim().is_empty())
            .map(Platform::parse)
            .collect()
    }

    /// Whether this filter selects `entry`.
    ///
    /// A filter without a variant selects every variant of its os/arch; a
    /// filter with one selects only that variant (`linux/arm/v7` is not
    /// `linux/arm/v6`). arm64 without a variant is v8, as containerd has it.
    pub fn selects(&self, entry: &Platform) -> bool {
        if self.os != entry.os || self.architecture != entry.architecture {
            return false;
        }
        match &self.variant {
            None => true,
            Some(want) => {
                let have = entry
                    .variant
                    .clone()
                    .or_else(|| (entry.architecture == "arm64").then(|| "v8".to_string()));
                have.as_deref() == Some(want.as_str())
            }
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_matter() {
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        let v6 = Platform::parse("linux/arm/v6").unwrap();
        let arm = Platform::parse("linux/arm").unwrap();
        assert!(v7.selects(&v7));
        assert!(!v7.selects(&v6));
        assert!(arm.selects(&v6));
        let arm64 = Platform::parse("linux/arm64").unwrap();
        assert!(Platform::parse("linux/arm64/v8").unwrap().selects(&arm64));
    }

    #[test]
    fn parses_comma_lists_and_rejects_junk() {
        let list = Platform::parse_list(&["linux/amd64,linux/arm64".into(), "linux/arm/v7".into()])
            .unwrap();
        assert_eq!(list.len(), 3);
        for bad in ["linux", "linux/", "a/b/c/d", "linux/amd 64", "../x"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_never_panics_and_round_trips(s in ".{0,60}") {
            if let Ok(p) = Platform::parse(&s) {
                prop_assert_eq!(Platform::parse(&p.to_string()).unwrap(), p.clone());
                prop_assert!(p.selects(&p));
            }
        }
    }
}
