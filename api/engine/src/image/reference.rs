//! Image references the way Docker parses and prints them (the `distribution/reference`
//! grammar): `[domain[:port]/]path[:tag][@digest]`, normalised so that `busybox` is
//! `docker.io/library/busybox:latest`, and shown in the "familiar" form (`busybox:latest`).

use std::fmt;

/// Docker Hub's canonical domain.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
/// The tag a name without one gets.
pub const DEFAULT_TAG: &str = "latest";
const NAME_MAX: usize = 255;

/// Why a reference does not parse. The messages are Docker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format")]
    InvalidFormat,
    #[error("invalid reference format: repository name must be lowercase")]
    Uppercase,
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    UppercaseRemote(String),
    #[error("invalid tag format")]
    InvalidTag,
    #[error("invalid digest format")]
    InvalidDigest,
    #[error("repository name must have at least one component")]
    Empty,
    #[error("repository name must not be more than 255 characters")]
    TooLong,
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexName(String),
}

/// A named reference: a repository, optionally a tag and/or a digest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    /// `docker.io`, `localhost:5000`, ...
    pub domain: String,
    /// `library/busybox`, `me/app`, ...
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

/// What a user-supplied string names: an image id (`sha256:<64 hex>` or 64 hex digits), or
/// a repository reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnyReference {
    Id(String),
    Named(Reference),
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run between two alphanumerics.
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn valid_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
}

/// `host[:port]`, host a dotted domain name or a bracketed IPv6 address.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return false;
        };
        let addr = &rest[..end];
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        (None, &rest[end + 1..])
    } else {
        match d.find(':') {
            Some(i) => (Some(&d[..i]), &d[i..]),
            None => (Some(d), ""),
        }
    };
    if let Some(host) = host {
        if !host.split('.').all(valid_domain_component) {
            return false;
        }
    }
    match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(p) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// `[\w][\w.-]{0,127}`
pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// `algorithm:hex` with at least 32 hex digits; berth knows only sha256 (64 digits).
pub fn valid_digest(d: &str) -> bool {
    let Some((alg, hex)) = d.split_once(':') else {
        return false;
    };
    let alg_ok = {
        let b = alg.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphabetic()
            && b.iter()
                .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'-' | b'_' | b'+' | b'.'))
    };
    alg_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Exactly 64 lowercase hex digits (an image id without its algorithm).
pub fn is_full_hex_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses the grammar without normalising (`Parse` in distribution/reference).
fn parse_exact(s: &str) -> Result<Reference, ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            if !valid_digest(d) {
                return Err(ReferenceError::InvalidFormat);
            }
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    // A tag follows the last ':' after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let t = &rest[last_slash + i + 1..];
            if !valid_tag(t) {
                return Err(ReferenceError::InvalidFormat);
            }
            (&rest[..last_slash + i], Some(t.to_string()))
        }
        None => (rest, None),
    };
    let (domain, path) = split_domain_exact(name);
    let path_ok = !path.is_empty() && path.split('/').all(valid_path_component);
    let domain_ok = domain.is_none_or(valid_domain);
    if !path_ok || !domain_ok {
        // Distinguish "uppercase" from other malformations, as Docker does.
        if path
            .split('/')
            .all(|c| valid_path_component(&c.to_ascii_lowercase()))
            && !path.is_empty()
            && domain_ok
        {
            return Err(ReferenceError::Uppercase);
        }
        return Err(ReferenceError::InvalidFormat);
    }
    if path.len() > NAME_MAX {
        return Err(ReferenceError::TooLong);
    }
    Ok(Reference {
        domain: domain.unwrap_or("").to_string(),
        path: path.to_string(),
        tag,
        digest,
    })
}

/// In the exact grammar the first component is a domain only if the rest still parses as a
/// path; Docker's regexp makes it a domain when it matches the domain grammar and is
/// followed by `/`. Names reaching here are already normalised, so their first component is
/// always a domain.
fn split_domain_exact(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((d, p)) => (Some(d), p),
        None => (None, name),
    }
}

/// Splits a familiar name into (domain, remainder), adding Docker Hub's defaults.
fn split_docker_domain(name: &str) -> (String, String) {
    let (domain, mut remainder) = match name.split_once('/') {
        None => (
            DEFAULT_DOMAIN.to_string(),
            format!("{OFFICIAL_PREFIX}{name}"),
        ),
        Some((d, r)) => {
            if d == "localhost" || d.contains(['.', ':']) || d.to_lowercase() != d {
                let d = if d == LEGACY_DEFAULT_DOMAIN {
                    DEFAULT_DOMAIN
                } else {
                    d
                };
                (d.to_string(), r.to_string())
            } else {
                (DEFAULT_DOMAIN.to_string(), name.to_string())
            }
        }
    };
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        remainder = format!("{OFFICIAL_PREFIX}{remainder}");
    }
    (domain, remainder)
}

impl Reference {
    /// Parses a familiar or full reference and normalises it (`ParseNormalizedNamed`).
    pub fn parse_normalized(s: &str) -> Result<Reference, ReferenceError> {
        if is_full_hex_id(s) {
            return Err(ReferenceError::HexName(s.to_string()));
        }
        if s.is_empty() {
            return Err(ReferenceError::InvalidFormat);
        }
        let (domain, remainder) = split_docker_domain(s);
        let remote = remainder
            .split_once(':')
            .map_or(remainder.as_str(), |(r, _)| r);
        let remote = remote.split_once('@').map_or(remote, |(r, _)| r);
        if remote.to_lowercase() != remote {
            return Err(ReferenceError::UppercaseRemote(remote.to_string()));
        }
        parse_exact(&format!("{domain}/{remainder}"))
    }

    /// The reference with `:latest` added when it has neither tag nor digest.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// The reference with `tag` (replacing any tag it had).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !valid_tag(tag) {
            return Err(ReferenceError::InvalidTag);
        }
        Ok(Reference {
            tag: Some(tag.to_string()),
            ..self.clone()
        })
    }

    /// Just the repository.
    pub fn name_only(&self) -> Reference {
        Reference {
            tag: None,
            digest: None,
            ..self.clone()
        }
    }

    /// `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        if self.domain.is_empty() {
            self.path.clone()
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }

    /// `busybox`, `me/app`, `localhost:5000/app`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            if let Some(rest) = self.path.strip_prefix(OFFICIAL_PREFIX) {
                if !rest.contains('/') {
                    return rest.to_string();
                }
            }
            return self.path.clone();
        }
        self.name()
    }

    fn suffix(&self) -> String {
        let mut s = String::new();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// `busybox:latest`, `me/app@sha256:...`.
    pub fn familiar(&self) -> String {
        format!("{}{}", self.familiar_name(), self.suffix())
    }

    /// Whether it names a repository only (no tag, no digest).
    pub fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }
}

impl fmt::Display for Reference {
    /// The full form: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.name(), self.suffix())
    }
}

impl AnyReference {
    /// `ParseAnyReference`: 64 hex digits or `algorithm:hex` are ids; anything else must be
    /// a name.
    pub fn parse(s: &str) -> Result<AnyReference, ReferenceError> {
        if is_full_hex_id(s) {
            return Ok(AnyReference::Id(format!("sha256:{s}")));
        }
        if valid_digest(s) {
            return Ok(AnyReference::Id(s.to_string()));
        }
        Reference::parse_normalized(s).map(AnyReference::Named)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> String {
        Reference::parse_normalized(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(full("busybox"), "docker.io/library/busybox");
        assert_eq!(full("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(full("me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(full("docker.io/busybox"), "docker.io/library/busybox");
        assert_eq!(full("index.docker.io/me/app"), "docker.io/me/app");
        assert_eq!(full("localhost/app"), "localhost/app");
        assert_eq!(full("localhost:5000/a/b:c"), "localhost:5000/a/b:c");
        assert_eq!(full("127.0.0.1:5000/app"), "127.0.0.1:5000/app");
        assert_eq!(full("[::1]:5000/app"), "[::1]:5000/app");
        assert_eq!(full("example.com/a__b/c-d.e"), "example.com/a__b/c-d.e");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            full(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            full(&format!("busybox:1@{d}")),
            format!("docker.io/library/busybox:1@{d}")
        );
        // Tags may hold uppercase letters; names may not.
        assert_eq!(full("busybox:Latest"), "docker.io/library/busybox:Latest");
    }

    #[test]
    fn familiar_forms() {
        let r = Reference::parse_normalized("busybox")
            .unwrap()
            .with_default_tag();
        assert_eq!(r.familiar(), "busybox:latest");
        assert_eq!(r.familiar_name(), "busybox");
        let r = Reference::parse_normalized("docker.io/library/a/b:x").unwrap();
        assert_eq!(r.familiar(), "library/a/b:x");
        let r = Reference::parse_normalized("localhost:5000/app").unwrap();
        assert_eq!(r.with_default_tag().familiar(), "localhost:5000/app:latest");
        assert!(Reference::parse_normalized("me/app")
            .unwrap()
            .is_name_only());
    }

    #[test]
    fn refuses_what_docker_refuses() {
        use ReferenceError::*;
        let err = |s: &str| Reference::parse_normalized(s).unwrap_err();
        assert_eq!(err("Busybox"), UppercaseRemote("library/Busybox".into()));
        assert_eq!(
            err("Busybox").to_string(),
            "invalid reference format: repository name (library/Busybox) must be lowercase"
        );
        assert_eq!(err(""), InvalidFormat);
        assert_eq!(err("a..b"), InvalidFormat);
        assert_eq!(err("a___b"), InvalidFormat);
        assert_eq!(err("-a"), InvalidFormat);
        assert_eq!(err("a/"), InvalidFormat);
        assert_eq!(err("a:-x"), InvalidFormat);
        assert_eq!(err("a@sha256:short"), InvalidFormat);
        assert_eq!(err(&"a".repeat(300)), TooLong);
        assert_eq!(err(&"f".repeat(64)), HexName("f".repeat(64)));
        assert_eq!(err("a:b:c"), InvalidFormat);
        assert!(Reference::parse_normalized("busybox")
            .unwrap()
            .with_tag("bad tag")
            .is_err());
        assert!(valid_tag(&"t".repeat(128)));
        assert!(!valid_tag(&"t".repeat(129)));
    }

    #[test]
    fn any_reference() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            AnyReference::parse(&hex).unwrap(),
            AnyReference::Id(format!("sha256:{hex}"))
        );
        assert_eq!(
            AnyReference::parse(&format!("sha256:{hex}")).unwrap(),
            AnyReference::Id(format!("sha256:{hex}"))
        );
        // A short id parses as a name; the store then tries it as an id prefix.
        assert!(matches!(
            AnyReference::parse("0123").unwrap(),
            AnyReference::Named(_)
        ));
        assert!(AnyReference::parse("UPPER").is_err());
    }
}
