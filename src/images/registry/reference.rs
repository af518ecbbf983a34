//! Image references as a user writes them (`[REGISTRY/]REPO[:TAG][@sha256:HEX]`), parsed
//! and checked by docker's rules.
//! Runs in the caller's process (the CLI, a grader) during a pull.

use std::fmt;

use super::RegistryError;

/// An image reference as a user writes it: `[REGISTRY/]REPO[:TAG][@sha256:HEX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with optional port), e.g. `docker.io` or `localhost:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/alpine`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was written.
    pub tag: Option<String>,
    /// Digest, `sha256:<64 lowercase hex>`.
    pub digest: Option<String>,
}

pub(super) fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// One path component: `[a-z0-9]+` separated by `.`, `_`, `__` or `-`+.
pub(super) fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0] as char) || !is_lower_alnum(b[b.len() - 1] as char) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i] as char) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i] as char) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

pub(super) fn valid_repository(r: &str) -> bool {
    !r.is_empty() && r.len() <= 255 && r.split('/').all(valid_component)
}

pub(super) fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
        _ => return false,
    }
    t.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

pub(super) fn valid_digest(d: &str) -> bool {
    match d.strip_prefix("sha256:") {
        Some(hex) => {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => false,
    }
}

pub(super) fn valid_registry(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
}

impl Reference {
    /// Parses a reference by Docker's rules: the first `/`-component is a
    /// registry if it contains `.` or `:` or is `localhost`; otherwise the
    /// registry is `docker.io` and a one-component repository gets `library/`.
    /// The tag defaults to `latest` when there is no digest.
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        let bad = |why: &str| RegistryError::InvalidReference(format!("{s:?}: {why}"));
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) if valid_digest(d) => (n, Some(d.to_string())),
            Some(_) => return Err(bad("digest must be sha256:<64 lowercase hex>")),
            None => (s, None),
        };
        let (registry, rest) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest)
            }
            _ => ("docker.io".to_string(), name),
        };
        let registry = if registry == "index.docker.io" {
            "docker.io".to_string()
        } else {
            registry
        };
        if !valid_registry(&registry) {
            return Err(bad("invalid registry host"));
        }
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(bad("invalid tag"));
            }
        }
        if !valid_repository(repo) {
            return Err(bad(
                "repository must be lowercase [a-z0-9] components separated by . _ __ - /",
            ));
        }
        let repository = if registry == "docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_string()
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host to talk to: `registry-1.docker.io` for `docker.io`, else the registry.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    /// The canonical full form, `registry/repository[:tag][@digest]`.
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
