//! ADD's remote sources: a URL the daemon fetches, as dockerd's classic builder fetches it.
//!
//! - A GET, following up to ten redirects. When berthd is given `--allow-fetch`, every
//!   hop's host must be one it names, checked before anything is sent to it, so a client
//!   cannot make the daemon reach what its operator keeps it from.
//! - A status of 400 or more fails the step in dockerd's words ("failed to GET URL with
//!   status 404 Not Found: BODY"), the body cut short.
//! - The file is named by the URL path's last element, else by the `filename` of
//!   `Content-Disposition`; with neither the step fails.
//! - It is written with mode 0600 and the server's `Last-Modified` time (the epoch when it
//!   gives none), as dockerd writes it; it is never unpacked (dockerd unpacks only local
//!   archives).
//! - A server that sends nothing for 60 s fails the step.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::image::registry::Registries;
use crate::{EngineError, Result};

/// How much of an error page a failure quotes.
const ERROR_BODY: usize = 1024;
const MAX_REDIRECTS: usize = 10;

/// Whether an ADD source is a URL the builder fetches.
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

fn failed(url: &str, why: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidArgument(format!("failed to GET {url}: {why}"))
}

/// The name a download takes: its URL's (encoded) path's last element, else Content-Disposition's
/// `filename` (its last element too); `None` when neither gives one. Never a path: one
/// element, not `.` or `..`.
pub fn file_name(url_path: &str, disposition: Option<&str>) -> Option<String> {
    // The last element of a path, decoded first (as Go's URL path is), so an encoded
    // slash never names a directory.
    let last = |path: &str| -> Option<String> {
        if path.ends_with('/') {
            return None;
        }
        let name = path.rsplit('/').next().unwrap_or("");
        (!name.is_empty() && name != "." && name != ".." && !name.contains('\0'))
            .then(|| name.to_string())
    };
    let path = percent_encoding::percent_decode_str(url_path).decode_utf8_lossy();
    last(&path).or_else(|| {
        let value = disposition?.split(';').skip(1).find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("filename")
                .then(|| v.trim().trim_matches('"').to_string())
        })?;
        last(&value)
    })
}

/// How often a download's progress is told: after each 512 KiB (or each 1% of a known
/// length, when that is less), and no more than each 100 ms, as dockerd's progress reader
/// tells it; its end is always told.
const PROGRESS_BYTES: u64 = 512 << 10;
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Fetches `url` into `dir` (a fresh directory of the build's); gives the file's name.
/// `progress` hears the bytes written so far and the length the server gave (0 without
/// one), as dockerd's "Downloading" lines tell them.
pub async fn fetch(
    registries: &Registries,
    url: &str,
    dir: &Path,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| failed(url, e))?;
    let host_of = |u: &reqwest::Url| -> String {
        let host = u.host_str().unwrap_or("").to_string();
        match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    };
    let first = host_of(&parsed);
    if !registries.may_fetch(&first) {
        return Err(registries.fetch_refused(url, &first));
    }
    let allowed = registries.clone();
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error("too many redirects");
        }
        let host = host_of(attempt.url());
        if allowed.may_fetch(&host) {
            attempt.follow()
        } else {
            attempt.error(format!(
                "a redirect to {host}, which --allow-fetch does not name"
            ))
        }
    });
    crate::image::registry::install_tls_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .redirect(policy)
        .build()
        .map_err(|e| EngineError::Internal(format!("cannot make an HTTP client: {e}")))?;
    let mut res = client
        .get(parsed.clone())
        .send()
        .await
        .map_err(|e| failed(url, vmm_launcher::chain(&e)))?;
    let status = res.status();
    if status.as_u16() >= 400 {
        let mut body = Vec::new();
        while body.len() < ERROR_BODY {
            match res.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        body.truncate(ERROR_BODY);
        return Err(EngineError::InvalidArgument(format!(
            "failed to GET {url} with status {} {}: {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            String::from_utf8_lossy(&body).trim()
        )));
    }
    let header = |name: reqwest::header::HeaderName| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let disposition = header(reqwest::header::CONTENT_DISPOSITION);
    let modified =
        header(reqwest::header::LAST_MODIFIED).and_then(|v| httpdate::parse_http_date(&v).ok());
    let name = file_name(parsed.path(), disposition.as_deref()).ok_or_else(|| {
        EngineError::InvalidArgument(format!("cannot determine filename from url: {url}"))
    })?;
    if name.contains(['*', '?', '[', '\\']) {
        // The builder would read it as a pattern.
        return Err(EngineError::Unsupported(format!(
            "ADD {url}: berth's builder cannot keep a download named {name:?} (a wildcard character)"
        )));
    }
    let path = dir.join(&name);
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                EngineError::InvalidArgument(format!(
                    "ADD {url}: cannot keep its download as {name:?}: {e}"
                ))
            })?
    };
    let written = |e: std::io::Error| EngineError::internal("cannot write an ADD download", e);
    let total = res.content_length().unwrap_or(0);
    let step = match total / 100 {
        0 => PROGRESS_BYTES,
        percent => percent.min(PROGRESS_BYTES),
    };
    let (mut current, mut told, mut told_at) = (0u64, 0u64, std::time::Instant::now());
    loop {
        match res.chunk().await {
            Ok(Some(c)) => {
                file.write_all(&c).map_err(written)?;
                current += c.len() as u64;
                if current - told > step && told_at.elapsed() >= PROGRESS_EVERY {
                    progress(current, total);
                    (told, told_at) = (current, std::time::Instant::now());
                }
            }
            Ok(None) => break,
            Err(e) => return Err(failed(url, vmm_launcher::chain(&e))),
        }
    }
    progress(current, total);
    // Without Last-Modified the file's time is the epoch, as dockerd leaves it.
    let t = modified.unwrap_or(std::time::UNIX_EPOCH);
    file.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .map_err(written)?;
    // The mode given at creation is under the umask; the file's own is dockerd's.
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(written)?;
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(url: &str, disposition: Option<&str>) -> Option<String> {
        file_name(reqwest::Url::parse(url).unwrap().path(), disposition)
    }

    #[test]
    fn downloads_are_named_as_dockerd_names_them() {
        assert_eq!(
            name("http://h/a/b.tar.gz", None).as_deref(),
            Some("b.tar.gz")
        );
        assert_eq!(
            name("http://h/a/b%20c.txt?x=1", None).as_deref(),
            Some("b c.txt")
        );
        assert_eq!(name("http://h/dir/", None), None);
        assert_eq!(name("http://h", None), None);
        assert_eq!(
            name("http://h/dir/", Some("attachment; filename=\"x/y.bin\"")).as_deref(),
            Some("y.bin")
        );
        assert_eq!(
            name("http://h/", Some("attachment; FILENAME=plain.txt")).as_deref(),
            Some("plain.txt")
        );
        assert_eq!(
            name("http://h/", Some("attachment; filename=\"../\"")),
            None
        );
        assert_eq!(name("http://h/", Some("inline")), None);
        // An encoded slash names no directory: the name is the last element.
        assert_eq!(name("http://h/a%2Fb", None).as_deref(), Some("b"));
        assert_eq!(
            name("http://h/x/..%2F..%2Fetc", None).as_deref(),
            Some("etc")
        );
        assert_eq!(name("http://h/x/%2E%2E", None), None);
        assert!(is_url("https://h/x") && !is_url("git@h:x") && !is_url("http:x"));
    }
}
