//! The stdio step of a start: the started process's output streams pumped to the
//! container's log and to every attached client, its stdin offered to the clients that
//! attach it. Needs no VM: the streams are Unix sockets (the agent's vsock connections in
//! a container, socket pairs in the tests).

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use super::logs::{LogConfig, LogWriter, Stream};
use super::{lock_std, vm, Chunk, Container};
use crate::{EngineError, Result};

/// The started process's stdio: its output pumped to the log file and every attached
/// client (the pumps returned, for the exit watcher to drain), its stdin offered to the
/// clients that attach it.
pub fn connect(
    container: &Arc<Container>,
    streams: vm::Streams,
    log_config: LogConfig,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let log = LogWriter::for_config(&container.log_path(), log_config)
        .map_err(|e| EngineError::internal("cannot open the container log", e))?;
    let log = Arc::new(std::sync::Mutex::new(log));
    let mut pumps = vec![spawn_pump(
        container.clone(),
        log.clone(),
        Stream::Stdout,
        streams.stdout,
    )?];
    if let Some(stderr) = streams.stderr {
        pumps.push(spawn_pump(
            container.clone(),
            log.clone(),
            Stream::Stderr,
            stderr,
        )?);
    }
    if let Some(stdin) = streams.stdin {
        stdin
            .set_nonblocking(true)
            .map_err(|e| EngineError::internal("stdin stream", e))?;
        let stdin = tokio::net::UnixStream::from_std(stdin)
            .map_err(|e| EngineError::internal("stdin stream", e))?;
        // Kept whether or not a client watches yet (`send` drops a value nobody watches): a
        // client that attaches later takes it then.
        container
            .stdin
            .send_replace(Some(Arc::new(Mutex::new(Some(stdin)))));
    }
    Ok(pumps)
}

/// Copies one output stream of the container to its log and attached clients.
fn spawn_pump(
    container: Arc<Container>,
    // `None`: the `none` driver keeps nothing; attached clients still get every byte.
    log: Arc<std::sync::Mutex<Option<LogWriter>>>,
    stream: Stream,
    source: std::os::unix::net::UnixStream,
) -> Result<tokio::task::JoinHandle<()>> {
    source
        .set_nonblocking(true)
        .map_err(|e| EngineError::internal("output stream", e))?;
    let mut source = tokio::net::UnixStream::from_std(source)
        .map_err(|e| EngineError::internal("output stream", e))?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let n = match source.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let data = Bytes::copy_from_slice(&buf[..n]);
            if let Some(Err(e)) = lock_std(&log).as_mut().map(|l| l.write(stream, &data)) {
                log::warn!("container {}: cannot write its log: {e}", container.id);
            }
            container
                .log_written
                .send_modify(|n| *n += data.len() as u64);
            let senders: Vec<_> = lock_std(&container.attachers).clone();
            for tx in senders {
                // A client that went away is dropped from the list below.
                let _ = tx
                    .send(Chunk {
                        stream,
                        data: data.clone(),
                    })
                    .await;
            }
            lock_std(&container.attachers).retain(|tx| !tx.is_closed());
        }
        if let Some(l) = lock_std(&log).as_mut() {
            let _ = l.finish(stream);
        }
        container.log_written.send_modify(|n| *n += 0);
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::logs::{LogOptions, LogReader};
    use crate::container::record::{Record, State};
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn container(dir: &std::path::Path) -> Arc<Container> {
        Container::new(
            dir.to_path_buf(),
            Record {
                id: "c0ffee".into(),
                name: "stdio".into(),
                created: std::time::SystemTime::now(),
                image: "busybox".into(),
                image_id: "sha256:00".into(),
                config: Default::default(),
                host_config: Default::default(),
                state: State::default(),
                restart_count: 0,
                networks: Default::default(),
                ports: Vec::new(),
            },
        )
    }

    #[tokio::test]
    async fn output_reaches_the_log_and_attached_clients_and_stdin_is_offered() {
        let dir = std::env::temp_dir().join(format!("berth-stdio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let c = container(&dir);
        let mut attached = c.attach_output(16);
        let (stdout, mut guest_out) = UnixStream::pair().unwrap();
        let (stderr, mut guest_err) = UnixStream::pair().unwrap();
        let (stdin, guest_in) = UnixStream::pair().unwrap();
        let pumps = connect(
            &c,
            vm::Streams {
                stdin: Some(stdin),
                stdout,
                stderr: Some(stderr),
            },
            LogConfig::DEFAULT,
        )
        .unwrap();
        assert_eq!(pumps.len(), 2);
        guest_out.write_all(b"to stdout\n").unwrap();
        guest_err.write_all(b"to stderr\n").unwrap();
        drop((guest_out, guest_err));
        for pump in pumps {
            pump.await.unwrap();
        }
        // Attached clients got each stream's bytes, tagged.
        let mut got = vec![];
        while let Ok(chunk) = attached.try_recv() {
            got.push((chunk.stream, chunk.data));
        }
        got.sort_by_key(|(s, _)| *s as u8);
        assert_eq!(
            got,
            vec![
                (Stream::Stdout, Bytes::from_static(b"to stdout\n")),
                (Stream::Stderr, Bytes::from_static(b"to stderr\n")),
            ]
        );
        // The log has both lines, each with its stream.
        let all = LogOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let (_, entries) = LogReader::open(&c.log_path(), &all).unwrap();
        let mut lines: Vec<_> = entries.into_iter().map(|e| (e.stream, e.bytes)).collect();
        lines.sort_by_key(|(s, _)| *s as u8);
        assert_eq!(
            lines,
            vec![
                (Stream::Stdout, b"to stdout\n".to_vec()),
                (Stream::Stderr, b"to stderr\n".to_vec()),
            ]
        );
        // Stdin is there for a client to take, and reaches the process.
        let sink = c.stdin.borrow().clone().expect("stdin offered");
        let mut taken = sink.lock().await.take().expect("stdin not taken yet");
        tokio::io::AsyncWriteExt::write_all(&mut taken, b"input")
            .await
            .unwrap();
        drop(taken);
        let mut read = String::new();
        std::io::Read::read_to_string(&mut &guest_in, &mut read).unwrap();
        assert_eq!(read, "input");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_none_driver_keeps_nothing_and_attached_clients_still_hear_everything() {
        let dir = std::env::temp_dir().join(format!("berth-stdio-none-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let c = container(&dir);
        let mut attached = c.attach_output(16);
        let (stdout, mut guest_out) = UnixStream::pair().unwrap();
        let streams = vm::Streams {
            stdin: None,
            stdout,
            stderr: None,
        };
        let pumps = connect(&c, streams, LogConfig::None).unwrap();
        guest_out.write_all(b"unlogged\n").unwrap();
        drop(guest_out);
        for pump in pumps {
            pump.await.unwrap();
        }
        let chunk = attached
            .try_recv()
            .expect("the attached client got the output");
        assert_eq!(chunk.data, Bytes::from_static(b"unlogged\n"));
        assert!(!c.log_path().exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
