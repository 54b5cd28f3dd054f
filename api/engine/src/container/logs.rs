//! Container logs in Docker's json-file format: one JSON object per line,
//! `{"log":"text\n","stream":"stdout","time":"2024-01-01T00:00:00.000000000Z"}`, in a
//! per-container file that outlives the daemon, rotated as dockerd rotates it (`max-size`,
//! `max-file`: `<id>-json.log.1` is the newest rotated file). Reading supports Docker's
//! options: streams, since/until, tail, and follow (until the container stops), across the
//! rotated files in order and across rotations that happen while following.
//!
//! The log drivers a container may choose ([`LogConfig`]): `json-file`, `local` (berth
//! keeps it in the same json-file store, with `local`'s defaults and options) and `none`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::time::{parse_rfc3339, rfc3339};

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Longest line kept whole; longer output is split, as Docker splits at 16 KiB.
const MAX_LINE: usize = 16 << 10;

/// How a container's output is kept: Docker's `--log-driver` and `--log-opt`, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogConfig {
    /// Nothing is kept; `docker logs` cannot read it.
    None,
    /// The json-file store, rotated past `max_size` bytes into at most `max_files` files
    /// (the one written included).
    Store {
        max_size: Option<u64>,
        max_files: u32,
    },
}

/// Why a `--log-driver`/`--log-opt` combination is refused, worded as dockerd words it
/// where dockerd has the same refusal.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogConfigError {
    #[error(
        "berth does not support the {0} log driver: berth keeps logs with json-file, local or none"
    )]
    UnsupportedDriver(String),
    #[error("error looking up logging plugin {0}: plugin \"{0}\" not found")]
    UnknownDriver(String),
    /// dockerd words this one differently for each driver.
    #[error("{}", unknown_option(driver, option))]
    UnknownOption { driver: String, option: String },
    #[error("invalid logging opts for driver none")]
    OptionsForNone,
    #[error("berth does not support --log-opt {option} for the {driver} log driver: {why}")]
    UnsupportedOption {
        driver: String,
        option: String,
        why: &'static str,
    },
    #[error("invalid size: '{0}'")]
    InvalidSize(String),
    #[error("max-size must be a positive number")]
    SizeNotPositive,
    #[error("invalid max-file: '{0}'")]
    InvalidMaxFile(String),
    #[error("max-file cannot be less than 1")]
    MaxFileBelowOne,
    #[error("invalid compress: '{0}'")]
    InvalidCompress(String),
}

/// Log drivers dockerd has that berth does not.
const OTHER_DOCKER_DRIVERS: &[&str] = &[
    "syslog",
    "journald",
    "gelf",
    "fluentd",
    "awslogs",
    "splunk",
    "etwlogs",
    "gcplogs",
    "logentries",
];

/// The `local` driver's rotation when it is given none (dockerd's defaults).
const LOCAL_MAX_SIZE: u64 = 20 * 1024 * 1024;
const LOCAL_MAX_FILES: u32 = 5;

impl LogConfig {
    /// The daemon's default: json-file, never rotated (dockerd's default).
    pub const DEFAULT: LogConfig = LogConfig::Store {
        max_size: None,
        max_files: 1,
    };

    /// Reads a driver name (empty: the daemon's default, json-file) and its options.
    pub fn parse(
        driver: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<LogConfig, LogConfigError> {
        let (mut max_size, mut max_files) = match driver {
            "" | "json-file" => (None, 1),
            "local" => (Some(LOCAL_MAX_SIZE), LOCAL_MAX_FILES),
            // The Docker CLI refuses options for `none` (dockerd would ignore them).
            "none" if options.is_empty() => return Ok(LogConfig::None),
            "none" => return Err(LogConfigError::OptionsForNone),
            d if OTHER_DOCKER_DRIVERS.contains(&d) => {
                return Err(LogConfigError::UnsupportedDriver(d.to_string()))
            }
            d => return Err(LogConfigError::UnknownDriver(d.to_string())),
        };
        let driver = if driver.is_empty() {
            "json-file"
        } else {
            driver
        };
        for (key, value) in options {
            match key.as_str() {
                "max-size" => {
                    let size = parse_human_size(value)
                        .ok_or_else(|| LogConfigError::InvalidSize(value.clone()))?;
                    if size == 0 {
                        return Err(LogConfigError::SizeNotPositive);
                    }
                    max_size = Some(size);
                }
                "max-file" => {
                    let n: i64 = value
                        .parse()
                        .map_err(|_| LogConfigError::InvalidMaxFile(value.clone()))?;
                    if n < 1 {
                        return Err(LogConfigError::MaxFileBelowOne);
                    }
                    max_files = u32::try_from(n)
                        .map_err(|_| LogConfigError::InvalidMaxFile(value.clone()))?;
                }
                "compress" => match parse_go_bool(value) {
                    Some(false) => {}
                    Some(true) => {
                        return Err(LogConfigError::UnsupportedOption {
                            driver: driver.to_string(),
                            option: format!("compress={value}"),
                            why: "rotated log files are kept uncompressed",
                        })
                    }
                    None => return Err(LogConfigError::InvalidCompress(value.clone())),
                },
                "labels" | "labels-regex" | "env" | "env-regex" | "tag"
                    if driver == "json-file" =>
                {
                    return Err(LogConfigError::UnsupportedOption {
                        driver: driver.to_string(),
                        option: key.clone(),
                        why: "log lines carry no extra attributes yet",
                    })
                }
                _ => {
                    return Err(LogConfigError::UnknownOption {
                        driver: driver.to_string(),
                        option: key.clone(),
                    })
                }
            }
        }
        Ok(LogConfig::Store {
            max_size,
            max_files,
        })
    }
}

fn unknown_option(driver: &str, option: &str) -> String {
    if driver == "json-file" {
        format!("unknown log opt '{option}' for json-file log driver")
    } else {
        format!("unknown log opt '{option}' for log driver {driver}")
    }
}

/// Go's `strconv.ParseBool`, which dockerd reads `compress` with.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// go-units' `FromHumanSize`, which dockerd reads `max-size` with: a decimal number, an
/// optional space, an optional unit `k`, `m`, `g`, `t` or `p` (powers of 1000, any case),
/// and an optional `i` and `b` (`10m`, `1.5k`, `20MB`, `1 GiB` is 10^9 too).
fn parse_human_size(s: &str) -> Option<u64> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, rest) = s.split_at(end);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let mut chars = rest.chars().peekable();
    let multiplier: f64 = match chars.peek().map(char::to_ascii_lowercase) {
        Some('k') => 1e3,
        Some('m') => 1e6,
        Some('g') => 1e9,
        Some('t') => 1e12,
        Some('p') => 1e15,
        _ => 1.0,
    };
    if multiplier > 1.0 {
        chars.next();
    }
    if chars.peek().is_some_and(|c| c.eq_ignore_ascii_case(&'i')) {
        chars.next();
    }
    if chars.peek().is_some_and(|c| c.eq_ignore_ascii_case(&'b')) {
        chars.next();
    }
    if chars.next().is_some() {
        return None;
    }
    let bytes = value * multiplier;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The `n`th rotated file of the log at `path` (`<id>-json.log.1` is the newest).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[derive(Serialize, Deserialize)]
struct JsonLine {
    log: String,
    stream: Stream,
    time: String,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub stream: Stream,
    pub time: SystemTime,
    pub bytes: Vec<u8>,
}

/// Appends a container's output to its log file, line by line, rotating it as its
/// [`LogConfig`] says.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    /// Bytes in `file`.
    size: u64,
    max_size: Option<u64>,
    max_files: u32,
    partial: [Vec<u8>; 2],
}

fn idx(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl LogWriter {
    /// Opens `path` for appending (creating it), never rotated.
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        Self::open_rotating(path, None, 1)
    }

    /// Opens `path` for appending (creating it); once it holds `max_size` bytes or more,
    /// the next line starts a new file and the old ones move up (`.1` → `.2`, ...), keeping
    /// `max_files` files in all. `None` for the driver that keeps nothing.
    pub fn for_config(path: &Path, config: LogConfig) -> std::io::Result<Option<LogWriter>> {
        match config {
            LogConfig::None => Ok(None),
            LogConfig::Store {
                max_size,
                max_files,
            } => Self::open_rotating(path, max_size, max_files).map(Some),
        }
    }

    fn open_rotating(
        path: &Path,
        max_size: Option<u64>,
        max_files: u32,
    ) -> std::io::Result<LogWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files: max_files.max(1),
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Moves the files up one place, dropping the oldest, and starts a new one. The file
    /// written so far is renamed (or, with one file kept, unlinked), never truncated: a
    /// follower reading it through its descriptor reads it to its end, then sees the path
    /// name another file and goes on there.
    fn rotate(&mut self) -> std::io::Result<()> {
        if self.max_files > 1 {
            for n in (1..self.max_files).rev() {
                let from = if n == 1 {
                    self.path.clone()
                } else {
                    rotated_path(&self.path, n - 1)
                };
                match std::fs::rename(&from, rotated_path(&self.path, n)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        } else {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }

    fn emit(&mut self, stream: Stream, bytes: &[u8]) -> std::io::Result<()> {
        let line = JsonLine {
            // Docker's json-file keeps invalid UTF-8 as replacement characters too.
            log: String::from_utf8_lossy(bytes).into_owned(),
            stream,
            time: rfc3339(SystemTime::now()),
        };
        let mut out = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
        out.push(b'\n');
        // As dockerd: a file is rotated once it has reached the size, before the next line.
        if self.max_size.is_some_and(|max| self.size >= max) {
            self.rotate()?;
        }
        self.file.write_all(&out)?;
        self.size += out.len() as u64;
        Ok(())
    }

    /// Records a chunk of output.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let i = idx(stream);
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let mut line = std::mem::take(&mut self.partial[i]);
                    line.extend_from_slice(&data[..=nl]);
                    self.emit(stream, &line)?;
                    data = &data[nl + 1..];
                }
                None => {
                    self.partial[i].extend_from_slice(data);
                    if self.partial[i].len() >= MAX_LINE {
                        let line = std::mem::take(&mut self.partial[i]);
                        self.emit(stream, &line)?;
                    }
                    data = &[];
                }
            }
        }
        Ok(())
    }

    /// Writes out partial lines (the stream ended).
    pub fn finish(&mut self, stream: Stream) -> std::io::Result<()> {
        let line = std::mem::take(&mut self.partial[idx(stream)]);
        if !line.is_empty() {
            self.emit(stream, &line)?;
        }
        Ok(())
    }
}

/// What to read (Docker's `GET /containers/{id}/logs` parameters).
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub stdout: bool,
    pub stderr: bool,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// The last N lines only.
    pub tail: Option<usize>,
}

impl LogOptions {
    fn wants(&self, e: &Entry) -> bool {
        let stream_ok = match e.stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        };
        stream_ok
            && self.since.is_none_or(|s| e.time >= s)
            && self.until.is_none_or(|u| e.time <= u)
    }
}

fn parse_line(line: &str) -> Option<Entry> {
    let j: JsonLine = serde_json::from_str(line).ok()?;
    Some(Entry {
        stream: j.stream,
        time: parse_rfc3339(&j.time)?,
        bytes: j.log.into_bytes(),
    })
}

/// A reader over a log and its rotated files that can resume where it stopped (for
/// follow).
pub struct LogReader {
    path: PathBuf,
    /// The file being read (the one the log's path named when last looked at), and how far.
    current: Option<(File, u64)>,
}

/// How many times an open starts again when the log rotates while its files are opened.
const OPEN_ATTEMPTS: u32 = 5;

fn open_if_exists(path: &Path) -> std::io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn identity(f: &File) -> std::io::Result<(u64, u64)> {
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

/// Appends the complete lines of `file` from `offset` on to `out`, moving `offset` past
/// them (a trailing partial line waits for its end).
fn read_lines(file: &mut File, offset: &mut u64, out: &mut Vec<Entry>) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(*offset))?;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            return Ok(());
        }
        *offset += n as u64;
        if let Some(e) = parse_line(line.trim_end_matches('\n')) {
            out.push(e);
        }
    }
}

impl LogReader {
    /// Reads the entries present now, the rotated files' first (oldest first), honouring
    /// `opts` (tail included); returns them and leaves the reader positioned at the end for
    /// [`LogReader::read_new`].
    pub fn open(path: &Path, opts: &LogOptions) -> std::io::Result<(LogReader, Vec<Entry>)> {
        let (current, rotated) = Self::open_files(path)?;
        let mut entries = Vec::new();
        for mut file in rotated {
            read_lines(&mut file, &mut 0, &mut entries)?;
        }
        let mut reader = LogReader {
            path: path.to_path_buf(),
            current: current.map(|f| (f, 0)),
        };
        entries.extend(reader.read_new()?);
        let mut entries: Vec<Entry> = entries.into_iter().filter(|e| opts.wants(e)).collect();
        if let Some(n) = opts.tail {
            let skip = entries.len().saturating_sub(n);
            entries.drain(..skip);
        }
        Ok((reader, entries))
    }

    /// The log's file and its rotated files, oldest first, as one consistent set: a
    /// rotation while they are opened would have a file read twice or missed, so the set is
    /// opened again when the log's path names another file afterwards.
    fn open_files(path: &Path) -> std::io::Result<(Option<File>, Vec<File>)> {
        for _ in 0..OPEN_ATTEMPTS {
            let current = open_if_exists(path)?;
            let before = current.as_ref().map(identity).transpose()?;
            let mut rotated = Vec::new();
            for n in 1.. {
                match open_if_exists(&rotated_path(path, n))? {
                    Some(f) => rotated.push(f),
                    None => break,
                }
            }
            let after = open_if_exists(path)?.as_ref().map(identity).transpose()?;
            if before == after {
                rotated.reverse();
                return Ok((current, rotated));
            }
        }
        Err(std::io::Error::other(format!(
            "{} rotated {OPEN_ATTEMPTS} times while it was being opened",
            path.display()
        )))
    }

    /// Complete lines appended since the last read (a trailing partial line waits). When
    /// the log has rotated since, the rest of the file being read comes first, then the new
    /// file's lines (a follower that sleeps through two rotations misses the file between,
    /// as it would with dockerd).
    pub fn read_new(&mut self) -> std::io::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        loop {
            if let Some((file, offset)) = &mut self.current {
                read_lines(file, offset, &mut entries)?;
            }
            let Some(named) = open_if_exists(&self.path)? else {
                // Between a rotation's unlink and its new file: the next read finds it.
                return Ok(entries);
            };
            if let Some((file, offset)) = &mut self.current {
                if identity(file)? == identity(&named)? {
                    return Ok(entries);
                }
                // Rotated: the writer has left this file, so what is in it now is all.
                read_lines(file, offset, &mut entries)?;
            }
            self.current = Some((named, 0));
        }
    }

    /// Filters entries read with [`LogReader::read_new`].
    pub fn filter(opts: &LogOptions, entries: Vec<Entry>) -> Vec<Entry> {
        entries.into_iter().filter(|e| opts.wants(e)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_roundtrip_with_tail_and_streams() {
        let dir = std::env::temp_dir().join(format!("berth-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c-json.log");
        let _ = std::fs::remove_file(&path);
        let mut w = LogWriter::open(&path).unwrap();
        w.write(Stream::Stdout, b"one\ntw").unwrap();
        w.write(Stream::Stderr, b"err\n").unwrap();
        w.write(Stream::Stdout, b"o\nthree").unwrap();
        w.finish(Stream::Stdout).unwrap();
        let all = LogOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let (_, e) = LogReader::open(&path, &all).unwrap();
        let text: Vec<_> = e
            .iter()
            .map(|e| String::from_utf8_lossy(&e.bytes).into_owned())
            .collect();
        assert_eq!(text, vec!["one\n", "err\n", "two\n", "three"]);
        let tail = LogOptions {
            stdout: true,
            tail: Some(2),
            ..Default::default()
        };
        let (mut r, e) = LogReader::open(&path, &tail).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].bytes, b"two\n");
        assert!(r.read_new().unwrap().is_empty());
        w.write(Stream::Stdout, b"four\n").unwrap();
        assert_eq!(r.read_new().unwrap()[0].bytes, b"four\n");
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(raw
            .lines()
            .next()
            .unwrap()
            .starts_with(r#"{"log":"one\n","stream":"stdout","time":""#));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn texts(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.bytes).trim_end().to_string())
            .collect()
    }

    #[test]
    fn rotation_keeps_max_files_and_reading_spans_them_in_order() {
        let dir = std::env::temp_dir().join(format!("berth-logrot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c-json.log");
        // Each line is about 80 bytes: a file reaches 200 bytes with its third line.
        let config = LogConfig::Store {
            max_size: Some(200),
            max_files: 3,
        };
        let mut w = LogWriter::for_config(&path, config).unwrap().unwrap();
        let all = LogOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let (mut follower, first) = LogReader::open(&path, &all).unwrap();
        assert!(first.is_empty());
        let mut followed = vec![];
        for i in 0..20 {
            w.write(Stream::Stdout, format!("line {i:02}\n").as_bytes())
                .unwrap();
            // A follower reading now and then sees every line across rotations.
            if i % 2 == 1 {
                followed.extend(follower.read_new().unwrap());
            }
        }
        followed.extend(follower.read_new().unwrap());
        let expected: Vec<String> = (0..20).map(|i| format!("line {i:02}")).collect();
        assert_eq!(texts(&followed), expected);
        // Three files kept, none past the size by more than one line.
        assert!(rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists());
        for f in [path.clone(), rotated_path(&path, 1), rotated_path(&path, 2)] {
            let len = std::fs::metadata(&f).unwrap().len();
            assert!(len > 0 && len < 300, "{}: {len}", f.display());
        }
        // A reader from scratch sees the kept lines, oldest first, and tail spans files.
        let (_, kept) = LogReader::open(&path, &all).unwrap();
        let kept = texts(&kept);
        assert_eq!(kept.last().map(String::as_str), Some("line 19"));
        assert_eq!(kept, expected[20 - kept.len()..].to_vec());
        assert!(kept.len() >= 7, "{kept:?}");
        let tail = LogOptions {
            tail: Some(5),
            ..all.clone()
        };
        let (_, last) = LogReader::open(&path, &tail).unwrap();
        assert_eq!(texts(&last), expected[15..].to_vec());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_file_kept_starts_over_and_a_follower_goes_on() {
        let dir = std::env::temp_dir().join(format!("berth-logone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c-json.log");
        let config = LogConfig::Store {
            max_size: Some(100),
            max_files: 1,
        };
        let mut w = LogWriter::for_config(&path, config).unwrap().unwrap();
        let all = LogOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        w.write(Stream::Stdout, b"a\nb\n").unwrap();
        let (mut follower, first) = LogReader::open(&path, &all).unwrap();
        assert_eq!(texts(&first), ["a", "b"]);
        w.write(Stream::Stdout, b"c\nd\n").unwrap();
        assert_eq!(texts(&follower.read_new().unwrap()), ["c", "d"]);
        assert!(!rotated_path(&path, 1).exists());
        let (_, now) = LogReader::open(&path, &all).unwrap();
        assert_eq!(texts(&now), ["c", "d"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn log_drivers_and_options_as_dockerd_reads_them() {
        let opts = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(LogConfig::parse("", &opts(&[])), Ok(LogConfig::DEFAULT));
        assert_eq!(
            LogConfig::parse(
                "json-file",
                &opts(&[("max-size", "10k"), ("max-file", "3")])
            ),
            Ok(LogConfig::Store {
                max_size: Some(10_000),
                max_files: 3
            })
        );
        assert_eq!(
            LogConfig::parse("local", &opts(&[])),
            Ok(LogConfig::Store {
                max_size: Some(LOCAL_MAX_SIZE),
                max_files: LOCAL_MAX_FILES
            })
        );
        assert_eq!(
            LogConfig::parse(
                "local",
                &opts(&[("max-size", "1.5MB"), ("compress", "false")])
            ),
            Ok(LogConfig::Store {
                max_size: Some(1_500_000),
                max_files: LOCAL_MAX_FILES
            })
        );
        assert_eq!(LogConfig::parse("none", &opts(&[])), Ok(LogConfig::None));
        assert_eq!(
            LogConfig::parse("none", &opts(&[("max-size", "1k")])),
            Err(LogConfigError::OptionsForNone)
        );
        let refused = |driver: &str, pairs: &[(&str, &str)]| {
            LogConfig::parse(driver, &opts(pairs))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("json-file", &[("max-sise", "1k")]),
            "unknown log opt 'max-sise' for json-file log driver"
        );
        assert_eq!(
            refused("local", &[("tag", "x")]),
            "unknown log opt 'tag' for log driver local"
        );
        assert!(refused("local", &[("compress", "true")]).contains("compress=true"));
        assert!(refused("json-file", &[("labels", "a")]).contains("--log-opt labels"));
        assert_eq!(
            refused("json-file", &[("max-size", "ten")]),
            "invalid size: 'ten'"
        );
        assert_eq!(
            refused("json-file", &[("max-size", "0")]),
            "max-size must be a positive number"
        );
        assert_eq!(
            refused("json-file", &[("max-file", "0")]),
            "max-file cannot be less than 1"
        );
        assert!(refused("syslog", &[]).starts_with("berth does not support the syslog log driver"));
        assert_eq!(
            refused("nope", &[]),
            "error looking up logging plugin nope: plugin \"nope\" not found"
        );
        for (s, n) in [
            ("10", 10),
            ("10b", 10),
            ("10k", 10_000),
            ("10 KB", 10_000),
            ("2m", 2_000_000),
            ("1GiB", 1_000_000_000),
            ("1.5k", 1_500),
        ] {
            assert_eq!(parse_human_size(s), Some(n), "{s}");
        }
        for s in ["", "k", "1.k", "10x", "10kk", "-1", "1e3"] {
            assert_eq!(parse_human_size(s), None, "{s}");
        }
    }
}
