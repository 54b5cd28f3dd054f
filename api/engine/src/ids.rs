//! Object identifiers and names the way Docker makes them: 64 hex digits, 12-digit short
//! forms, and generated names of the form `adjective_surname`.

use std::io::Read;

/// Random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if filled.is_err() {
        // /dev/urandom always exists on Linux; if it somehow does not, fall back to the
        // time, which is enough for unique (not secret) identifiers.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            .to_le_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = t[i % t.len()] ^ (i as u8);
        }
    }
    buf
}

/// A new 64-hex-digit identifier.
pub fn new_id() -> String {
    hex::encode(random_bytes::<32>())
}

/// The 12-digit short form of an identifier.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Whether `s` looks like a full or partial hex identifier.
pub fn is_hex_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

const ADJECTIVES: &[&str] = &[
    "admiring",
    "amazing",
    "awesome",
    "blissful",
    "bold",
    "brave",
    "busy",
    "charming",
    "clever",
    "cool",
    "dazzling",
    "determined",
    "eager",
    "ecstatic",
    "elegant",
    "epic",
    "festive",
    "focused",
    "friendly",
    "gallant",
    "gifted",
    "happy",
    "hopeful",
    "jolly",
    "keen",
    "kind",
    "laughing",
    "loving",
    "lucid",
    "magical",
    "modest",
    "nifty",
    "nostalgic",
    "optimistic",
    "peaceful",
    "practical",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "stoic",
    "sweet",
    "tender",
    "trusting",
    "upbeat",
    "vibrant",
    "wizardly",
    "youthful",
    "zealous",
];

const SURNAMES: &[&str] = &[
    "albattani",
    "allen",
    "babbage",
    "bardeen",
    "bell",
    "blackwell",
    "bohr",
    "cannon",
    "curie",
    "darwin",
    "dijkstra",
    "einstein",
    "euclid",
    "faraday",
    "fermi",
    "feynman",
    "franklin",
    "galileo",
    "goldberg",
    "goodall",
    "hamilton",
    "hawking",
    "hodgkin",
    "hopper",
    "hypatia",
    "johnson",
    "kepler",
    "knuth",
    "lamarr",
    "leakey",
    "lovelace",
    "mayer",
    "mccarthy",
    "meitner",
    "morse",
    "newton",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "sinoussi",
    "tesla",
    "thompson",
    "torvalds",
    "turing",
    "wilson",
    "wozniak",
    "yalow",
];

/// A generated container name.
pub fn random_name() -> String {
    let r = random_bytes::<2>();
    format!(
        "{}_{}",
        ADJECTIVES[r[0] as usize % ADJECTIVES.len()],
        SURNAMES[r[1] as usize % SURNAMES.len()]
    )
}

/// Docker's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    name.len() >= 2
        && name.len() <= 255
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        let id = new_id();
        assert_eq!(id.len(), 64);
        assert!(is_hex_prefix(&id));
        assert_ne!(id, new_id());
        assert_eq!(short(&id).len(), 12);
        assert!(valid_name(&random_name()));
        assert!(valid_name("web-1.a_b"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a"));
        assert!(!valid_name("a b"));
        assert!(!is_hex_prefix("ABC"));
        assert!(!is_hex_prefix("xyz"));
    }
}
