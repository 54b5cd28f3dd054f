//! Container logs in Docker's json-file format: one JSON object per line,
//! `{"log":"text\n","stream":"stdout","time":"2024-01-01T00:00:00.000000000Z"}`, in a
//! per-container file that outlives the daemon. Reading supports Docker's options: streams,
//! since/until, tail, and follow (until the container stops).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
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

/// Appends a container's output to its log file, line by line.
pub struct LogWriter {
    file: File,
    partial: [Vec<u8>; 2],
}

fn idx(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl LogWriter {
    /// Opens `path` for appending (creating it).
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogWriter {
            file,
            partial: [Vec::new(), Vec::new()],
        })
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
        self.file.write_all(&out)
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

/// A reader over a log file that can resume where it stopped (for follow).
pub struct LogReader {
    path: PathBuf,
    offset: u64,
}

impl LogReader {
    /// Reads the entries present now, honouring `opts` (tail included); returns them and
    /// leaves the reader positioned at the end for [`LogReader::read_new`].
    pub fn open(path: &Path, opts: &LogOptions) -> std::io::Result<(LogReader, Vec<Entry>)> {
        let mut reader = LogReader {
            path: path.to_path_buf(),
            offset: 0,
        };
        let mut entries: Vec<Entry> = reader
            .read_new()?
            .into_iter()
            .filter(|e| opts.wants(e))
            .collect();
        if let Some(n) = opts.tail {
            let skip = entries.len().saturating_sub(n);
            entries.drain(..skip);
        }
        Ok((reader, entries))
    }

    /// Complete lines appended since the last read (a trailing partial line waits).
    pub fn read_new(&mut self) -> std::io::Result<Vec<Entry>> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut reader = BufReader::new(file);
        let mut entries = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += n as u64;
            if let Some(e) = parse_line(line.trim_end_matches('\n')) {
                entries.push(e);
            }
        }
        Ok(entries)
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
}
