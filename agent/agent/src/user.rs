//! Docker's `--user` and `--group-add`, resolved against a root filesystem's `/etc/passwd`
//! and `/etc/group` the way moby resolves them (`daemon/oci_linux.go` `getUser`, over
//! `moby/sys/user` `GetExecUser` and `GetAdditionalGroups`), so that a container sees the
//! same uid, gid, groups and error wording under berth as under Docker:
//!
//! - `name`, `uid`, `name:group`, `uid:gid`, `name:gid`, `uid:group`, `:group` and the empty
//!   string (root). A number is always an id, never a name; a number without an entry is
//!   used as it is, within 0..=2147483647. The first matching entry wins.
//! - Without an explicit group, the supplementary groups are those whose member list names
//!   the matched user; with one, there are none. Docker then sets the groups to the primary
//!   gid, those supplementary groups and `--group-add`, in that order.
//! - A missing file is no error (numeric ids still work); a name that is not found is.
//!
//! Deliberate differences, all for input Docker would also choke on: a file larger than
//! [`MAX_DB_FILE_LEN`] is refused rather than read whole; a resolved id outside the range of
//! a Linux id is an error instead of wrapping around.
//!
//! Pure functions over the files' bytes: reading them from a container's root is the
//! caller's business.

/// Largest passwd or group file read.
pub const MAX_DB_FILE_LEN: usize = 16 << 20;
/// Longest passwd line: Go's `bufio.Scanner` token limit, which Docker's passwd parser has.
const MAX_PASSWD_LINE: usize = 64 * 1024;
/// The id range Docker accepts for numeric ids without an entry.
const MAX_ID: i64 = (1 << 31) - 1;
/// Most supplementary groups (Linux's `NGROUPS_MAX`).
const MAX_GROUPS: usize = 65_536;

/// Why a user string did not resolve. The messages are Docker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {user}: no matching entries in passwd file")]
    NoSuchUser { user: String },
    #[error("unable to find group {group}: no matching entries in group file")]
    NoSuchGroup { group: String },
    #[error("Unable to find group {group}: no matching entries in group file")]
    NoSuchAdditionalGroup { group: String },
    #[error("uids and gids must be in range 0-{MAX_ID}")]
    Range,
    #[error("unable to find user {user}: {reason}")]
    Passwd { user: String, reason: String },
    #[error("unable to find groups for spec {user}: {reason}")]
    Group { user: String, reason: String },
    #[error("{id} is not a valid Linux id")]
    BadId { id: i64 },
    #[error("more than {MAX_GROUPS} supplementary groups")]
    TooManyGroups,
}

/// A root's user databases: the contents of `/etc/passwd` and `/etc/group`, `None` where
/// the file does not exist (or could not be opened, which Docker treats the same).
#[derive(Debug, Clone, Default)]
pub struct Databases {
    pub passwd: Option<Vec<u8>>,
    pub group: Option<Vec<u8>>,
}

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Every supplementary group, in Docker's order (primary gid first).
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: i64,
    gid: i64,
    home: String,
}

/// A group line, borrowed from the file: a large file costs no allocation per member.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry<'a> {
    name: &'a [u8],
    gid: i64,
    members: &'a [u8],
}

impl GroupEntry<'_> {
    fn has_member(&self, user: &str) -> bool {
        !self.members.is_empty()
            && self
                .members
                .split(|&b| b == b',')
                .any(|m| m == user.as_bytes())
    }

    /// Docker's match of a `--group-add` entry: by name, or by the gid's decimal form.
    fn matches_name_or_gid(&self, wanted: &str) -> bool {
        self.name == wanted.as_bytes() || self.gid.to_string() == wanted
    }
}

/// Go's `strconv.Atoi` on a 64-bit platform: `Ok` for a valid number; `Err(Some(v))` for
/// one out of range (Go also returns the clamped value); `Err(None)` for anything else.
fn go_atoi(s: &str) -> Result<i64, Option<i64>> {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(None);
    }
    let mut v: i64 = 0;
    for b in digits.bytes() {
        let d = i64::from(b - b'0');
        let next = v.checked_mul(10).and_then(|v| {
            if negative {
                v.checked_sub(d)
            } else {
                v.checked_add(d)
            }
        });
        match next {
            Some(n) => v = n,
            None => return Err(Some(if negative { i64::MIN } else { i64::MAX })),
        }
    }
    Ok(v)
}

/// A numeric field as Docker's parser reads it: conversion errors give 0, out-of-range
/// values the clamped bound.
fn lenient_int(s: &str) -> i64 {
    match go_atoi(s) {
        Ok(v) | Err(Some(v)) => v,
        Err(None) => 0,
    }
}

/// Go's `bytes.TrimSpace` for ASCII whitespace.
fn trim(line: &[u8]) -> &[u8] {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let start = line.iter().position(|b| !is_space(b)).unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |e| e + 1);
    &line[start..end]
}

fn field<'a>(parts: &[&'a [u8]], i: usize) -> &'a [u8] {
    parts.get(i).copied().unwrap_or_default()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn int(b: &[u8]) -> i64 {
    std::str::from_utf8(b).map_or(0, lenient_int)
}

/// The lines of a passwd file, as Go's line scanner yields them, or the reason it stops.
fn passwd_entries(data: &[u8]) -> impl Iterator<Item = Result<PasswdEntry, String>> + '_ {
    let mut failed = false;
    data.split(|&b| b == b'\n').filter_map(move |raw| {
        if failed {
            return None;
        }
        if raw.len() > MAX_PASSWD_LINE {
            failed = true;
            return Some(Err("bufio.Scanner: token too long".to_owned()));
        }
        let line = trim(raw);
        if line.is_empty() {
            return None;
        }
        // name:password:UID:GID:GECOS:directory:shell (later fields are ignored; splitn
        // keeps a line of colons from costing a slice each).
        let parts: Vec<&[u8]> = line.splitn(8, |&b| b == b':').collect();
        Some(Ok(PasswdEntry {
            name: text(field(&parts, 0)),
            uid: int(field(&parts, 2)),
            gid: int(field(&parts, 3)),
            home: text(field(&parts, 5)),
        }))
    })
}

/// The entries of a group file; blank lines and `#` comments are skipped.
fn group_entries(data: &[u8]) -> impl Iterator<Item = GroupEntry<'_>> + '_ {
    data.split(|&b| b == b'\n').filter_map(|raw| {
        let line = trim(raw);
        if line.is_empty() || line[0] == b'#' {
            return None;
        }
        // group_name:password:GID:user_list
        let parts: Vec<&[u8]> = line.splitn(5, |&b| b == b':').collect();
        Some(GroupEntry {
            name: field(&parts, 0),
            gid: int(field(&parts, 2)),
            members: field(&parts, 3),
        })
    })
}

/// The first passwd entry `pred` accepts, or the read error Docker would report.
fn find_user(
    passwd: &[u8],
    mut pred: impl FnMut(&PasswdEntry) -> bool,
) -> Result<Option<PasswdEntry>, String> {
    for e in passwd_entries(passwd) {
        let e = e?;
        if pred(&e) {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

fn to_id(v: i64) -> Result<u32, UserError> {
    // u32::MAX is (uid_t)-1, "unchanged" to set*id(2).
    u32::try_from(v)
        .ok()
        .filter(|&id| id != u32::MAX)
        .ok_or(UserError::BadId { id: v })
}

fn in_docker_range(v: i64) -> Result<i64, UserError> {
    if (0..=MAX_ID).contains(&v) {
        Ok(v)
    } else {
        Err(UserError::Range)
    }
}

/// Docker's uid, gid and supplementary groups for `user` (see the module docs), before
/// `--group-add`.
pub fn resolve_user(user: &str, db: &Databases) -> Result<Identity, UserError> {
    // "a:b:c" is user a, group b: the rest is ignored, as Docker's parser does.
    let mut fields = user.split(':');
    let user_arg = fields.next().unwrap_or_default();
    let group_arg = fields.next().unwrap_or_default();
    let uid_arg = go_atoi(user_arg).ok();
    let gid_arg = go_atoi(group_arg).ok();

    let (mut uid, mut gid) = (0i64, 0i64);
    let mut matched_name = None;
    let found = match &db.passwd {
        None => None,
        Some(passwd) => find_user(passwd, |u| {
            if user_arg.is_empty() {
                u.uid == 0
            } else if let Some(n) = uid_arg {
                u.uid == n
            } else {
                u.name == user_arg
            }
        })
        .map_err(|reason| UserError::Passwd {
            user: if user_arg.is_empty() {
                "0".to_owned()
            } else {
                user_arg.to_owned()
            },
            reason,
        })?,
    };
    if let Some(u) = found {
        uid = u.uid;
        gid = u.gid;
        matched_name = Some(u.name);
    } else if !user_arg.is_empty() {
        let Some(n) = uid_arg else {
            return Err(UserError::NoSuchUser {
                user: user_arg.to_owned(),
            });
        };
        uid = in_docker_range(n)?;
    }

    let mut sgids = Vec::new();
    if !group_arg.is_empty() {
        let found = db.group.as_deref().and_then(|g| {
            group_entries(g).find(|e| match gid_arg {
                Some(n) => e.gid == n,
                None => e.name == group_arg.as_bytes(),
            })
        });
        gid = match (found, gid_arg) {
            (Some(e), _) => e.gid,
            (None, Some(n)) => in_docker_range(n)?,
            (None, None) => {
                return Err(UserError::NoSuchGroup {
                    group: group_arg.to_owned(),
                })
            }
        };
    } else if let (Some(name), Some(group)) = (&matched_name, &db.group) {
        for e in group_entries(group) {
            if e.has_member(name) {
                if sgids.len() >= MAX_GROUPS {
                    return Err(UserError::TooManyGroups);
                }
                sgids.push(to_id(e.gid)?);
            }
        }
    }

    let gid = to_id(gid)?;
    let mut groups = Vec::with_capacity(sgids.len() + 1);
    groups.push(gid);
    groups.extend(sgids);
    Ok(Identity {
        uid: to_id(uid)?,
        gid,
        groups,
    })
}

/// Docker's `--group-add`: each entry is a group name or gid from the group file (first
/// match), else a number used as it is. Duplicates collapse.
pub fn additional_groups(wanted: &[String], db: &Databases) -> Result<Vec<u32>, UserError> {
    let entries: Vec<GroupEntry<'_>> = match &db.group {
        Some(g) => group_entries(g)
            .filter(|e| wanted.iter().any(|w| e.matches_name_or_gid(w)))
            .collect(),
        None => Vec::new(),
    };
    let mut out: Vec<u32> = Vec::new();
    for w in wanted {
        let gid = match entries.iter().find(|e| e.matches_name_or_gid(w)) {
            Some(e) => to_id(e.gid)?,
            None => {
                let Ok(n) = go_atoi(w) else {
                    return Err(UserError::NoSuchAdditionalGroup { group: w.clone() });
                };
                to_id(in_docker_range(n)?)?
            }
        };
        if !out.contains(&gid) {
            out.push(gid);
        }
    }
    Ok(out)
}

/// The home directory runc gives a process without `HOME`: that of the first passwd entry
/// with its uid, else `/`.
pub fn home_for_uid(uid: u32, db: &Databases) -> Result<String, UserError> {
    let Some(passwd) = &db.passwd else {
        return Ok("/".to_owned());
    };
    let found =
        find_user(passwd, |u| u.uid == i64::from(uid)).map_err(|reason| UserError::Passwd {
            user: uid.to_string(),
            reason,
        })?;
    Ok(found.map_or_else(|| "/".to_owned(), |u| u.home))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
  app:x:1000:1000:App User,,,:/home/app:/bin/sh\r
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin

nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
app:x:2000:2000:shadowed second entry:/home/app2:/bin/sh
short:x:3000
odd:x:abc:-5::/odd:
";

    const GROUP: &str = "\
# comment line
root:x:0:
daemon:x:1:
wheel:x:10:root,app
audio:x:29:app,someone
staff:x:50:
app:x:1000:
users:x:100:nobody,app
ghost:x:4242:root
";

    fn db() -> Databases {
        Databases {
            passwd: Some(PASSWD.as_bytes().to_vec()),
            group: Some(GROUP.as_bytes().to_vec()),
        }
    }

    fn id(uid: u32, gid: u32, groups: &[u32]) -> Identity {
        Identity {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn names_numbers_and_groups() {
        let db = db();
        // Empty: root, with root's memberships.
        assert_eq!(resolve_user("", &db).unwrap(), id(0, 0, &[0, 10, 4242]));
        assert_eq!(resolve_user("root", &db).unwrap(), id(0, 0, &[0, 10, 4242]));
        // By name (leading space and trailing CR trimmed), first entry wins.
        assert_eq!(
            resolve_user("app", &db).unwrap(),
            id(1000, 1000, &[1000, 10, 29, 100])
        );
        // By uid: the entry's gid and memberships come along.
        assert_eq!(
            resolve_user("1000", &db).unwrap(),
            id(1000, 1000, &[1000, 10, 29, 100])
        );
        assert_eq!(resolve_user("33", &db).unwrap(), id(33, 33, &[33]));
        // A uid without an entry: gid 0, no groups.
        assert_eq!(resolve_user("4321", &db).unwrap(), id(4321, 0, &[0]));
        // Explicit groups: no supplementary groups.
        assert_eq!(resolve_user("app:staff", &db).unwrap(), id(1000, 50, &[50]));
        assert_eq!(resolve_user("app:29", &db).unwrap(), id(1000, 29, &[29]));
        assert_eq!(resolve_user("app:777", &db).unwrap(), id(1000, 777, &[777]));
        assert_eq!(
            resolve_user("4321:staff", &db).unwrap(),
            id(4321, 50, &[50])
        );
        assert_eq!(
            resolve_user("4321:4322", &db).unwrap(),
            id(4321, 4322, &[4322])
        );
        // ":group": root's uid, the group's gid.
        assert_eq!(resolve_user(":audio", &db).unwrap(), id(0, 29, &[29]));
        // Fields past the group are ignored.
        assert_eq!(
            resolve_user("app:staff:junk", &db).unwrap(),
            id(1000, 50, &[50])
        );
        // Go's Atoi: a sign is allowed, leading zeros too.
        assert_eq!(resolve_user("+0033", &db).unwrap(), id(33, 33, &[33]));
    }

    #[test]
    fn docker_error_wording() {
        let db = db();
        assert_eq!(
            resolve_user("foo", &db).unwrap_err().to_string(),
            "unable to find user foo: no matching entries in passwd file"
        );
        assert_eq!(
            resolve_user("app:nogroup", &db).unwrap_err().to_string(),
            "unable to find group nogroup: no matching entries in group file"
        );
        assert_eq!(
            resolve_user("-1", &db).unwrap_err().to_string(),
            "uids and gids must be in range 0-2147483647"
        );
        assert_eq!(
            resolve_user("2147483648", &db).unwrap_err(),
            UserError::Range
        );
        assert_eq!(resolve_user("app:-3", &db).unwrap_err(), UserError::Range);
        // Too large for Go's int: not a number at all, so a name that does not exist.
        assert!(matches!(
            resolve_user("99999999999999999999", &db),
            Err(UserError::NoSuchUser { .. })
        ));
    }

    #[test]
    fn missing_files() {
        let none = Databases::default();
        assert_eq!(resolve_user("", &none).unwrap(), id(0, 0, &[0]));
        assert_eq!(
            resolve_user("1000:1000", &none).unwrap(),
            id(1000, 1000, &[1000])
        );
        assert_eq!(resolve_user("1000", &none).unwrap(), id(1000, 0, &[0]));
        assert!(matches!(
            resolve_user("app", &none),
            Err(UserError::NoSuchUser { .. })
        ));
        assert!(matches!(
            resolve_user("0:wheel", &none),
            Err(UserError::NoSuchGroup { .. })
        ));
        assert_eq!(home_for_uid(1000, &none).unwrap(), "/");
        assert_eq!(additional_groups(&["12".into()], &none).unwrap(), vec![12]);
    }

    #[test]
    fn malformed_lines_parse_as_docker_parses_them() {
        let db = db();
        // "short:x:3000" has no gid field: gid 0.
        assert_eq!(resolve_user("short", &db).unwrap(), id(3000, 0, &[0]));
        // "odd:x:abc:-5": a uid that is not a number reads as 0, like Docker's parser; the
        // negative gid is no Linux id.
        assert_eq!(
            resolve_user("odd", &db).unwrap_err(),
            UserError::BadId { id: -5 }
        );
        // A passwd line longer than Go's scanner takes stops the parse with its error.
        let mut passwd = format!("long:x:5:5:{}:/:/bin/sh\n", "g".repeat(70_000));
        passwd.push_str("after:x:6:6::/:/bin/sh\n");
        let db = Databases {
            passwd: Some(passwd.into_bytes()),
            group: None,
        };
        assert_eq!(
            resolve_user("after", &db).unwrap_err().to_string(),
            "unable to find user after: bufio.Scanner: token too long"
        );
        // Binary junk is not a panic.
        let db = Databases {
            passwd: Some(vec![0xff, b':', 0, b'\n', b':', b':', b':']),
            group: Some(vec![b':', 0xfe, b',', b'\n', b'#']),
        };
        assert!(resolve_user("x", &db).is_err());
        assert_eq!(resolve_user("", &db).unwrap().uid, 0);
    }

    #[test]
    fn group_add() {
        let db = db();
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            additional_groups(&g(&["audio", "50", "4321", "staff"]), &db).unwrap(),
            vec![29, 50, 4321]
        );
        assert_eq!(
            additional_groups(&g(&["nosuch"]), &db)
                .unwrap_err()
                .to_string(),
            "Unable to find group nosuch: no matching entries in group file"
        );
        assert_eq!(
            additional_groups(&g(&["-1"]), &db).unwrap_err(),
            UserError::Range
        );
    }

    #[test]
    fn home_directories() {
        let db = db();
        assert_eq!(home_for_uid(0, &db).unwrap(), "/root");
        assert_eq!(home_for_uid(1000, &db).unwrap(), "/home/app");
        assert_eq!(home_for_uid(4321, &db).unwrap(), "/");
        // An entry with an empty home field gives an empty HOME, as with runc.
        let db = Databases {
            passwd: Some(b"x:x:7:7:::".to_vec()),
            group: None,
        };
        assert_eq!(home_for_uid(7, &db).unwrap(), "");
    }

    #[test]
    fn real_world_files() {
        // Debian's base-passwd, Alpine's and busybox's shapes.
        let debian = "root:x:0:0:root:/root:/bin/bash\n\
                      daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                      _apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        let debian_group = "root:x:0:\nsudo:x:27:\nnogroup:x:65534:\n";
        let db = Databases {
            passwd: Some(debian.into()),
            group: Some(debian_group.into()),
        };
        assert_eq!(
            resolve_user("nobody", &db).unwrap(),
            id(65534, 65534, &[65534])
        );
        assert_eq!(resolve_user("_apt", &db).unwrap(), id(42, 65534, &[65534]));
        let alpine_group = "root:x:0:root,bin,daemon\nbin:x:1:root,bin,daemon\n\
                            wheel:x:10:root\nnogroup:x:65533:\n";
        let db = Databases {
            passwd: Some("root:x:0:0:root:/root:/bin/ash\n".into()),
            group: Some(alpine_group.into()),
        };
        assert_eq!(resolve_user("", &db).unwrap(), id(0, 0, &[0, 0, 1, 10]));
    }

    #[test]
    fn huge_files_stay_bounded_in_time() {
        // 16 MiB of members: one pass, no quadratic blow-up.
        let mut group = String::from("big:x:5000:");
        while group.len() < MAX_DB_FILE_LEN - 16 {
            group.push_str("member,");
        }
        group.push_str("app\n");
        let db = Databases {
            passwd: Some(PASSWD.into()),
            group: Some(group.into_bytes()),
        };
        let start = std::time::Instant::now();
        assert_eq!(resolve_user("app", &db).unwrap().groups, vec![1000, 5000]);
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn atoi_is_go_atoi() {
        assert_eq!(go_atoi("0"), Ok(0));
        assert_eq!(go_atoi("-12"), Ok(-12));
        assert_eq!(go_atoi("+7"), Ok(7));
        assert_eq!(go_atoi(""), Err(None));
        assert_eq!(go_atoi("-"), Err(None));
        assert_eq!(go_atoi(" 1"), Err(None));
        assert_eq!(go_atoi("1_000"), Err(None));
        assert_eq!(go_atoi("9223372036854775808"), Err(Some(i64::MAX)));
        assert_eq!(go_atoi("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(go_atoi("-9223372036854775809"), Err(Some(i64::MIN)));
    }
}
