//! Member to member, over mutual TLS: the source serves its volume (`serve`), each destination
//! pulls what it lacks (`pull`). A pull is incremental - it fetches only files whose size, mode
//! or SHA-256 differ from the source's manifest and removes what the source no longer has - so
//! the stage copy and the final sync after the fence are the same operation. Each file arrives
//! under a staging name next to where it lands (same volume), is checked against the SHA-256 the
//! source's manifest gave for it, and only then renamed into place; runs of zero bytes are written as holes (sparse files stay
//! sparse).
//!
//! Wire format (after the TLS handshake), one request at a time per connection:
//! `MANIFEST\n` -> `OK <len>\n<len bytes of JSON manifest>`; `GET <escaped path>\n` ->
//! `OK <len>\n<len bytes>` or `ERR <why>\n`; `BYE\n`. A destination may only ask for files
//! listed in the last manifest the source sent (on any connection: a destination pulls over
//! several).

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Error;
use super::manifest::{self, Entry, Kind, Manifest, STAGING_PREFIX};
use super::tls::SERVER_NAME;

const CHUNK: usize = 1 << 20;
const HOLE: usize = 64 << 10;

fn path_of(root: &Path, escaped: &str) -> Result<PathBuf, Error> {
    let bytes = manifest::unescape(escaped)
        .filter(|b| manifest::safe_relative(b))
        .ok_or_else(|| Error::Protocol(format!("unsafe path {escaped}")))?;
    Ok(root.join(std::ffi::OsStr::from_bytes(&bytes)))
}

fn read_line(r: &mut impl BufRead) -> Result<String, Error> {
    let mut line = String::new();
    let n = r.read_line(&mut line).map_err(Error::Net)?;
    if n == 0 {
        return Err(Error::Protocol("connection closed".into()));
    }
    Ok(line.trim_end_matches('\n').to_string())
}

fn ok_len(line: &str) -> Result<u64, Error> {
    match line.strip_prefix("OK ") {
        Some(n) => n
            .parse()
            .map_err(|_| Error::Protocol(format!("bad length in {line}"))),
        None => Err(Error::Protocol(format!("source answered: {line}"))),
    }
}

/// Serves `root` to destinations holding a client certificate of the move, on `listener`,
/// until `connections` connections have ended (forever when `None`).
pub fn serve(
    root: &Path,
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    connections: Option<usize>,
) -> Result<(), Error> {
    let mut handles = Vec::new();
    let sent: Arc<Mutex<Option<Manifest>>> = Arc::default();
    for (n, stream) in listener.incoming().enumerate() {
        let stream = stream.map_err(Error::Net)?;
        let (root, config, sent) = (root.to_path_buf(), config.clone(), sent.clone());
        handles.push(std::thread::spawn(move || {
            if let Err(e) = serve_one(&root, stream, config, &sent) {
                tracing::warn!(error = %e, "mover connection ended with an error");
            }
        }));
        if connections.is_some_and(|c| n + 1 >= c) {
            break;
        }
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn serve_one(
    root: &Path,
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    sent: &Mutex<Option<Manifest>>,
) -> Result<(), Error> {
    stream.set_nodelay(true).map_err(Error::Net)?;
    let conn = rustls::ServerConnection::new(config).map_err(|e| Error::Tls(e.to_string()))?;
    let tls = rustls::StreamOwned::new(conn, stream);
    let mut r = BufReader::with_capacity(CHUNK, tls);
    loop {
        let line = match read_line(&mut r) {
            Ok(l) => l,
            Err(Error::Protocol(_)) => return Ok(()), // closed
            Err(e) => return Err(e),
        };
        if line == "BYE" {
            return Ok(());
        } else if line == "MANIFEST" {
            let m = manifest::scan(root).map_err(|e| Error::io(root, e))?;
            let body = serde_json::to_vec(&m).map_err(|e| Error::Protocol(e.to_string()))?;
            // kept before it is sent: the destination's other connections ask for its files
            // as soon as it has it
            *sent.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
            let w = r.get_mut();
            writeln!(w, "OK {}", body.len()).map_err(Error::Net)?;
            w.write_all(&body).map_err(Error::Net)?;
            w.flush().map_err(Error::Net)?;
        } else if let Some(p) = line.strip_prefix("GET ") {
            let listed = sent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|m| m.get(p))
                .is_some_and(|e| e.kind == Kind::File);
            let w = r.get_mut();
            if !listed {
                writeln!(w, "ERR not a file of the manifest sent").map_err(Error::Net)?;
                w.flush().map_err(Error::Net)?;
                continue;
            }
            let path = path_of(root, p)?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path);
            let mut file = match file {
                Ok(f) => f,
                Err(e) => {
                    writeln!(w, "ERR {e}").map_err(Error::Net)?;
                    w.flush().map_err(Error::Net)?;
                    continue;
                }
            };
            let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
            writeln!(w, "OK {len}").map_err(Error::Net)?;
            let copied = std::io::copy(&mut (&mut file).take(len), w).map_err(Error::Net)?;
            if copied != len {
                return Err(Error::Protocol(format!("{p} shrank while it was sent")));
            }
            w.flush().map_err(Error::Net)?;
        } else {
            return Err(Error::Protocol(format!("unknown request {line}")));
        }
    }
}

/// What a pull did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PullReport {
    /// The digest of the source's manifest this pull followed.
    pub source_digest: String,
    /// Files fetched.
    pub files_fetched: u64,
    /// Bytes fetched.
    pub bytes_fetched: u64,
    /// Entries removed because the source no longer has them.
    pub removed: u64,
    /// Files that changed on the source while they were copied (fetch again).
    pub changed_during_copy: Vec<String>,
    /// Totals of the source's manifest.
    pub totals: manifest::Totals,
    /// Wall time, seconds.
    pub seconds: f64,
}

struct Conn {
    r: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl Conn {
    fn open(addr: &str, config: &Arc<rustls::ClientConfig>) -> Result<Conn, Error> {
        let stream = TcpStream::connect(addr).map_err(Error::Net)?;
        stream.set_nodelay(true).map_err(Error::Net)?;
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let conn = rustls::ClientConnection::new(config.clone(), name)
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Conn {
            r: BufReader::with_capacity(CHUNK, rustls::StreamOwned::new(conn, stream)),
        })
    }

    fn request(&mut self, line: &str) -> Result<u64, Error> {
        let w = self.r.get_mut();
        w.write_all(line.as_bytes()).map_err(Error::Net)?;
        w.write_all(b"\n").map_err(Error::Net)?;
        w.flush().map_err(Error::Net)?;
        ok_len(&read_line(&mut self.r)?)
    }

    fn manifest(&mut self) -> Result<Manifest, Error> {
        let len = self.request("MANIFEST")?;
        let mut body = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        (&mut self.r)
            .take(len)
            .read_to_end(&mut body)
            .map_err(Error::Net)?;
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(format!("manifest: {e}")))
    }

    /// Fetches one file into `staging`; returns its SHA-256 and length.
    fn fetch(&mut self, path: &str, staging: &Path) -> Result<(String, u64), Error> {
        let len = self.request(&format!("GET {path}"))?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(staging)
            .map_err(|e| Error::io(staging, e))?;
        let mut h = Sha256::new();
        let mut left = len;
        let mut buf = vec![0u8; CHUNK];
        while left > 0 {
            let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
            self.r.read_exact(&mut buf[..want]).map_err(Error::Net)?;
            h.update(&buf[..want]);
            for piece in buf[..want].chunks(HOLE) {
                if piece.iter().all(|&b| b == 0) {
                    out.seek(std::io::SeekFrom::Current(piece.len() as i64))
                        .map_err(|e| Error::io(staging, e))?;
                } else {
                    out.write_all(piece).map_err(|e| Error::io(staging, e))?;
                }
            }
            left -= want as u64;
        }
        out.set_len(len).map_err(|e| Error::io(staging, e))?;
        Ok((hex::encode(h.finalize()), len))
    }

    fn bye(mut self) {
        let w = self.r.get_mut();
        let _ = w.write_all(b"BYE\n");
        let _ = w.flush();
        w.conn.send_close_notify();
        let _ = w.flush();
    }
}

fn remove(path: &Path, kind: Kind) -> std::io::Result<()> {
    if kind == Kind::Dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Brings `root` to the source's content at `addr`, with `parallel` connections.
pub fn pull(
    root: &Path,
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    parallel: usize,
) -> Result<PullReport, Error> {
    let start = Instant::now();
    let mut first = Conn::open(addr, &config)?;
    let source = first.manifest()?;
    let local = manifest::scan(root).map_err(|e| Error::io(root, e))?;
    let mut report = PullReport {
        source_digest: source.digest(),
        ..Default::default()
    };

    // what the source does not have (or has as another kind) goes, children first
    for e in local.entries.iter().rev() {
        let keep = source.get(&e.path).is_some_and(|s| s.kind == e.kind);
        if !keep {
            let p = path_of(root, &e.path)?;
            match remove(&p, e.kind) {
                Ok(()) => report.removed += 1,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io(&p, err)),
            }
        }
    }
    // directories (writable while filling; their modes are set last)
    for e in source.entries.iter().filter(|e| e.kind == Kind::Dir) {
        let p = path_of(root, &e.path)?;
        match std::fs::create_dir(&p) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(Error::io(&p, err)),
        }
        // a directory the mover does not own (a volume's root) cannot be chmodded by a
        // non-root mover: it only needs to be writable
        match set_mode(&p, 0o700) {
            Err(err)
                if err.kind() == std::io::ErrorKind::PermissionDenied
                    && rustix::fs::access(
                        &p,
                        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
                    )
                    .is_ok() => {}
            r => r.map_err(|err| Error::io(&p, err))?,
        }
    }
    // files: a mode change alone is applied here; different content is fetched
    let mut wanted: Vec<Entry> = Vec::new();
    for e in source.entries.iter().filter(|e| e.kind == Kind::File) {
        match local.get(&e.path) {
            Some(l) if l.sha256 == e.sha256 && l.size == e.size => {
                if l.mode != e.mode {
                    let p = path_of(root, &e.path)?;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode))
                        .map_err(|err| Error::io(&p, err))?;
                }
            }
            _ => wanted.push(e.clone()),
        }
    }
    // what a cut-off pull left half-received
    manifest::remove_staging(root).map_err(|e| Error::io(root, e))?;
    // the biggest first (taken from the end), so that the connections finish together
    wanted.sort_by_key(|e| e.size);
    let queue = Arc::new(Mutex::new(wanted));
    let outcome = Arc::new(Mutex::new((0u64, 0u64, Vec::<String>::new())));
    let mut conns = vec![first];
    for _ in 1..parallel.max(1) {
        conns.push(Conn::open(addr, &config)?);
    }
    let workers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let (queue, outcome, root) = (queue.clone(), outcome.clone(), root.to_path_buf());
            std::thread::spawn(move || -> Result<(), Error> {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let Some(e) = next else { break };
                    let dest = path_of(&root, &e.path)?;
                    inside(&root, &dest)?;
                    // received next to where it lands: the rename stays on its volume
                    let tmp = dest.with_file_name(format!("{STAGING_PREFIX}{i}"));
                    let (sha, len) = match conn.fetch(&e.path, &tmp) {
                        Ok(got) => got,
                        Err(err) => {
                            let _ = std::fs::remove_file(&tmp);
                            return Err(err);
                        }
                    };
                    if Some(&sha) != e.sha256.as_ref() {
                        let _ = std::fs::remove_file(&tmp);
                        outcome
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .2
                            .push(e.path.clone());
                        continue;
                    }
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(e.mode))
                        .map_err(|err| Error::io(&tmp, err))?;
                    std::fs::rename(&tmp, &dest).map_err(|err| Error::io(&dest, err))?;
                    let mut o = outcome.lock().unwrap_or_else(|e| e.into_inner());
                    o.0 += 1;
                    o.1 += len;
                }
                conn.bye();
                Ok(())
            })
        })
        .collect();
    let mut failure = None;
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some(Error::Protocol("a worker panicked".into()))),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // symlinks last: no file is ever written through one
    for e in source.entries.iter().filter(|e| e.kind == Kind::Symlink) {
        if local.get(&e.path) == Some(e) {
            continue;
        }
        let p = path_of(root, &e.path)?;
        let _ = std::fs::remove_file(&p);
        let target = e
            .target
            .as_deref()
            .and_then(manifest::unescape)
            .unwrap_or_default();
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &p)
            .map_err(|err| Error::io(&p, err))?;
    }
    // directory modes, deepest first
    for e in source.entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        let p = path_of(root, &e.path)?;
        set_mode(&p, e.mode).map_err(|err| Error::io(&p, err))?;
    }
    // everything on disk before the pull reports success (one sync of the filesystem instead of
    // one per file)
    sync_filesystem(root)?;
    let o = outcome.lock().unwrap_or_else(|e| e.into_inner());
    report.files_fetched = o.0;
    report.bytes_fetched = o.1;
    report.changed_during_copy = o.2.clone();
    report.totals = source.totals();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// `Err` unless every directory between `root` and `path` is a real directory (not a
/// symlink): a file is only ever written inside the volume.
fn inside(root: &Path, path: &Path) -> Result<(), Error> {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root {
            return Ok(());
        }
        let meta = std::fs::symlink_metadata(d).map_err(|e| Error::io(d, e))?;
        if !meta.file_type().is_dir() {
            return Err(Error::Protocol(format!(
                "{} is not a directory",
                d.display()
            )));
        }
        dir = d.parent();
    }
    Err(Error::Protocol(format!(
        "{} is outside the volume",
        path.display()
    )))
}

/// Flushes the filesystem holding `root` to stable storage (`syncfs`).
fn sync_filesystem(root: &Path) -> Result<(), Error> {
    let dir = std::fs::File::open(root).map_err(|e| Error::io(root, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::io(root, e.into()))
}
/// Sets `p`'s mode unless it has it already (so a directory the mover does not own, whose mode
/// is already right, needs no permission it lacks).
fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    let now = std::fs::symlink_metadata(p)?.permissions().mode() & 0o7777;
    if now == mode & 0o7777 {
        return Ok(());
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}
