//! Names and digests as the image store spells them: validation, the file name a name is
//! stored under, and what a user's reference (a name, `sha256:HEX`, or a digest prefix) means.

use crate::error::{Error, ErrorKind, Result};

/// `sha256:<64 lowercase hex>` checked, or an `InvalidImage` error naming `what`.
pub(crate) fn sha256_hex<'a>(digest: &'a str, what: &str) -> Result<&'a str> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if is_hex64(hex) => Ok(hex),
        _ => Err(Error::new(
            ErrorKind::InvalidImage,
            format!("{what} {digest:?} is not a sha256 digest (sha256:<64 lowercase hex>)"),
        )),
    }
}

/// 64 lowercase hex digits.
pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks an image name: what a registry reference, a layout's `ref.name` or a docker
/// archive's `RepoTags` entry may be (`[A-Za-z0-9][A-Za-z0-9._/:@+-]*`, at most 255 bytes,
/// no `..`, not a bare digest).
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/:@+-".contains(&b))
        && !name.contains("..")
        && !name.starts_with("sha256:")
        && !is_hex64(name);
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidImage,
            format!("{} is not a valid image name", super::import::shown(name)),
        ))
    }
}

/// The file name a (checked) name is stored under in `names/`: `/` and `%` escaped, so
/// every name is one file.
pub(crate) fn name_file(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

/// The name stored under `file` (see [`name_file`]).
pub(crate) fn file_name(file: &str) -> String {
    file.replace("%2F", "/").replace("%25", "%")
}

/// What a user's reference asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum Wanted {
    /// A name, then what it may be stored as: with `:latest` when it has no tag or digest,
    /// and as docker spells it (`docker.io/`, `docker.io/library/` in front) when it names
    /// no registry, so `busybox` finds `docker.io/library/busybox:latest`.
    Name(String, Vec<String>),
    /// A full manifest digest (hex).
    Digest(String),
    /// A prefix of a manifest digest (12 to 63 hex digits).
    Prefix(String),
}

/// Parses a reference: `sha256:HEX`, 12-64 hex digits (a digest or its prefix), else a name.
pub(crate) fn wanted(reference: &str) -> Result<Wanted> {
    if let Some(hex) = reference.strip_prefix("sha256:") {
        sha256_hex(reference, "image digest")?;
        return Ok(Wanted::Digest(hex.to_string()));
    }
    let hexish = reference
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if hexish && reference.len() == 64 {
        return Ok(Wanted::Digest(reference.to_string()));
    }
    if hexish && (12..64).contains(&reference.len()) {
        return Ok(Wanted::Prefix(reference.to_string()));
    }
    check_name(reference)?;
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let mut tagged = vec![reference.to_string()];
    if !last.contains(':') && !reference.contains('@') {
        tagged.push(format!("{reference}:latest"));
    }
    let first = reference.split('/').next().unwrap_or(reference);
    let has_registry = reference.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut also = Vec::new();
    if !has_registry {
        for t in &tagged {
            if !reference.contains('/') {
                also.push(format!("docker.io/library/{t}"));
            }
            also.push(format!("docker.io/{t}"));
        }
    }
    let mut candidates: Vec<String> = tagged.into_iter().skip(1).collect();
    candidates.extend(also);
    Ok(Wanted::Name(reference.to_string(), candidates))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_their_file_names_and_bad_ones_are_refused() {
        for name in ["busybox:1", "127.0.0.1:5000/test/img:t", "a%b/c"] {
            let file = name_file(name);
            assert!(!file.contains('/'));
            assert_eq!(file_name(&file), name);
        }
        for bad in [
            "",
            "../x",
            "a/../b",
            "/abs",
            "a b",
            "sha256:00",
            &"f".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn references_mean_names_digests_or_prefixes() {
        let hex = "ab".repeat(32);
        assert_eq!(
            wanted(&format!("sha256:{hex}")).unwrap(),
            Wanted::Digest(hex.clone())
        );
        assert_eq!(wanted(&hex).unwrap(), Wanted::Digest(hex.clone()));
        assert_eq!(
            wanted(&hex[..12]).unwrap(),
            Wanted::Prefix(hex[..12].into())
        );
        assert_eq!(
            wanted("localhost:5000/img").unwrap(),
            Wanted::Name(
                "localhost:5000/img".into(),
                vec!["localhost:5000/img:latest".into()]
            )
        );
        assert_eq!(
            wanted("img:1").unwrap(),
            Wanted::Name(
                "img:1".into(),
                vec!["docker.io/library/img:1".into(), "docker.io/img:1".into()]
            )
        );
        assert_eq!(
            wanted("test/img:v1").unwrap(),
            Wanted::Name("test/img:v1".into(), vec!["docker.io/test/img:v1".into()])
        );
        assert!(wanted("sha256:xyz").is_err());
    }
}
