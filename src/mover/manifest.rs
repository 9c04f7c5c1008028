//! A volume's manifest: every entry under a root (path, type, size, mode, SHA-256 of a file's
//! bytes, a symlink's target), sorted by path, and one digest over it. Two sides hold the same
//! data exactly when their digests are equal; [`differences`] names the first paths that are not.
//!
//! Paths are the raw bytes of the names relative to the root (names with spaces or non-ASCII
//! characters are kept exactly), written percent-escaped in the canonical lines the digest is
//! computed over. Symlinks are never followed. The files a pull is still receiving (named
//! [`STAGING_PREFIX`]`...`, next to where they will land) are not part of the data.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The name prefix of a file a pull is receiving, in the directory it will be renamed into (the
/// same volume, so the rename is atomic); never part of a manifest, removed by the next pull if a
/// pull was cut off.
pub const STAGING_PREFIX: &str = ".residency-mover-incoming-";

/// Whether a directory entry's name is a file being received.
pub fn is_staging(name: &[u8]) -> bool {
    name.starts_with(STAGING_PREFIX.as_bytes())
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else (fifo, socket, device): recorded, never copied.
    Other,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::File => 'f',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::Other => 'o',
        }
    }
}

/// One entry of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The path relative to the root, percent-escaped (see [`escape`]).
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// Size in bytes (files; 0 otherwise).
    pub size: u64,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// SHA-256 of the bytes (files), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The link target (symlinks), percent-escaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Entry {
    /// The canonical line of this entry: `type mode size sha256|- path[ -> target]`.
    pub fn line(&self) -> String {
        let mut l = format!(
            "{} {:04o} {} {} {}",
            self.kind.letter(),
            self.mode,
            self.size,
            self.sha256.as_deref().unwrap_or("-"),
            self.path
        );
        if let Some(t) = &self.target {
            l.push_str(" -> ");
            l.push_str(t);
        }
        l
    }
}

/// Every entry under a root, sorted by path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The entries (the root itself is not one).
    pub entries: Vec<Entry>,
}

/// Totals of a manifest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Bytes of the regular files.
    pub bytes: u64,
}

impl Manifest {
    /// SHA-256 over the canonical lines (each followed by `\n`), hex: equal digests, equal data.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for e in &self.entries {
            h.update(e.line().as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }

    /// Counts of files, directories, symlinks and bytes.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for e in &self.entries {
            match e.kind {
                Kind::File => {
                    t.files += 1;
                    t.bytes += e.size;
                }
                Kind::Dir => t.dirs += 1,
                Kind::Symlink => t.symlinks += 1,
                Kind::Other => {}
            }
        }
        t
    }

    /// The entry at `path` (escaped).
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// One way two manifests differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// The path (escaped).
    pub path: String,
    /// `missing on the destination`, `only on the destination`, or `differs: <source line> / <destination line>`.
    pub what: String,
}

/// The first `max` paths where `source` and `destination` differ, in path order (pure).
pub fn differences(source: &Manifest, destination: &Manifest, max: usize) -> Vec<Difference> {
    let (mut a, mut b) = (
        source.entries.iter().peekable(),
        destination.entries.iter().peekable(),
    );
    let mut out = Vec::new();
    while out.len() < max {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(x), None) => {
                out.push(Difference {
                    path: x.path.clone(),
                    what: "missing on the destination".into(),
                });
                a.next();
            }
            (None, Some(y)) => {
                out.push(Difference {
                    path: y.path.clone(),
                    what: "only on the destination".into(),
                });
                b.next();
            }
            (Some(x), Some(y)) => match x.path.cmp(&y.path) {
                std::cmp::Ordering::Less => {
                    out.push(Difference {
                        path: x.path.clone(),
                        what: "missing on the destination".into(),
                    });
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push(Difference {
                        path: y.path.clone(),
                        what: "only on the destination".into(),
                    });
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if x != y {
                        out.push(Difference {
                            path: x.path.clone(),
                            what: format!("differs: {} / {}", x.line(), y.line()),
                        });
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    out
}

/// Percent-escapes a path's bytes: printable ASCII other than `%` and space stays, every other
/// byte becomes `%XX`. Sorting escaped paths sorts by a deterministic, byte-based order.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'%' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The bytes an escaped path stands for; `None` for a malformed escape.
pub fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A relative path that stays inside the root: no empty, `.` or `..` component, not absolute.
pub fn safe_relative(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes[0] != b'/'
        && bytes
            .split(|&c| c == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// SHA-256 of a file's bytes, hex (read in 1 MiB chunks).
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Scans everything under `root` (not following symlinks, skipping files being received); files
/// are hashed on every core.
pub fn scan(root: &Path) -> std::io::Result<Manifest> {
    let mut entries = Vec::new();
    walk(root, &[], &mut entries)?;
    entries.sort_by(|a: &Entry, b: &Entry| a.path.cmp(&b.path));
    // the biggest files first, spread over the workers
    let mut files: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].kind == Kind::File)
        .collect();
    files.sort_by_key(|&i| std::cmp::Reverse(entries[i].size));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let hashes: Vec<std::io::Result<Vec<(usize, String)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&i) = files.get(k) else { break };
                        let rel = unescape(&entries[i].path).unwrap_or_default();
                        out.push((i, hash_file(&root.join(std::ffi::OsStr::from_bytes(&rel)))?));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a hashing thread panicked")))
            })
            .collect()
    });
    for r in hashes {
        for (i, h) in r? {
            entries[i].sha256 = Some(h);
        }
    }
    Ok(Manifest { entries })
}

fn walk(root: &Path, rel: &[u8], out: &mut Vec<Entry>) -> std::io::Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(rel))
    };
    for item in std::fs::read_dir(&dir)? {
        let item = item?;
        let name = item.file_name();
        let name = name.as_bytes();
        if is_staging(name) {
            continue;
        }
        let mut path = rel.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        let full = root.join(std::ffi::OsStr::from_bytes(&path));
        let meta = std::fs::symlink_metadata(&full)?;
        let ft = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        let escaped = escape(&path);
        if ft.is_dir() {
            out.push(Entry {
                path: escaped,
                kind: Kind::Dir,
                size: 0,
                mode,
                sha256: None,
                target: None,
            });
            walk(root, &path, out)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&full)?;
            out.push(Entry {
                path: escaped,
                kind: Kind::Symlink,
                size: 0,
                mode: 0o777,
                sha256: None,
                target: Some(escape(target.as_os_str().as_bytes())),
            });
        } else if ft.is_file() {
            // hashed afterwards, in parallel
            out.push(Entry {
                path: escaped,
                kind: Kind::File,
                size: meta.size(),
                mode,
                sha256: None,
                target: None,
            });
        } else {
            out.push(Entry {
                path: escaped,
                kind: Kind::Other,
                size: 0,
                mode,
                sha256: None,
                target: None,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A directory of many shapes: nested, empty, sparse, symlinks, odd names.
    pub(crate) fn shapes(root: &Path) {
        use std::io::{Seek, Write};
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::write(root.join("a/b/c/deep.txt"), b"deep").unwrap();
        std::fs::write(root.join("empty"), b"").unwrap();
        std::fs::write(root.join("with space.txt"), b"spaced").unwrap();
        std::fs::write(root.join("Zürich-日本.bin"), [0u8, 1, 2, 255]).unwrap();
        let mut sparse = std::fs::File::create(root.join("sparse")).unwrap();
        sparse.seek(std::io::SeekFrom::Start(10 << 20)).unwrap();
        sparse.write_all(b"end").unwrap();
        std::os::unix::fs::symlink("a/b/c/deep.txt", root.join("link")).unwrap();
        std::os::unix::fs::symlink("/nowhere", root.join("dangling")).unwrap();
        std::fs::create_dir(root.join("emptydir")).unwrap();
        std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::shapes;
    use super::*;

    #[test]
    fn manifests_describe_every_shape_and_change_with_any_byte() {
        let d = tempfile::tempdir().unwrap();
        shapes(d.path());
        let m = scan(d.path()).unwrap();
        let t = m.totals();
        assert_eq!((t.files, t.dirs, t.symlinks), (5, 4, 2));
        assert_eq!(t.bytes, 4 + 6 + 4 + (10 << 20) + 3);
        let odd = m.get(&escape("Zürich-日本.bin".as_bytes())).unwrap();
        assert_eq!(odd.kind, Kind::File);
        assert_eq!(unescape(&odd.path).unwrap(), "Zürich-日本.bin".as_bytes());
        assert!(m.get("with%20space.txt").is_some());
        assert_eq!(
            m.get("link").unwrap().target.as_deref(),
            Some("a/b/c/deep.txt")
        );
        assert_eq!(m.get("empty").unwrap().mode, 0o600);
        // sorted, deterministic
        assert_eq!(scan(d.path()).unwrap().digest(), m.digest());
        let mut sorted = m.entries.clone();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(sorted, m.entries);
        // one byte changed: another digest, and the path named
        std::fs::write(d.path().join("a/b/c/deep.txt"), b"Deep").unwrap();
        let changed = scan(d.path()).unwrap();
        assert_ne!(changed.digest(), m.digest());
        let diff = differences(&m, &changed, 5);
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].path, "a/b/c/deep.txt");
        // a mode, a link target, a missing and an extra file are all differences
        std::fs::set_permissions(
            d.path().join("empty"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::remove_file(d.path().join("link")).unwrap();
        std::os::unix::fs::symlink("elsewhere", d.path().join("link")).unwrap();
        std::fs::remove_file(d.path().join("with space.txt")).unwrap();
        std::fs::write(d.path().join("extra"), b"x").unwrap();
        let paths: Vec<String> = differences(&m, &scan(d.path()).unwrap(), 10)
            .into_iter()
            .map(|d| d.path)
            .collect();
        assert_eq!(
            paths,
            [
                "a/b/c/deep.txt",
                "empty",
                "extra",
                "link",
                "with%20space.txt"
            ]
        );
        // a file being received is not data
        let before = scan(d.path()).unwrap().digest();
        std::fs::write(d.path().join(format!("a/{STAGING_PREFIX}0")), b"p").unwrap();
        assert_eq!(scan(d.path()).unwrap().digest(), before);
    }

    #[test]
    fn escaping_round_trips_and_unsafe_paths_are_refused() {
        for p in [
            &b"plain"[..],
            b"with space",
            b"100%",
            "Zürich".as_bytes(),
            &[0xff, 0x00, b'a'],
        ] {
            assert_eq!(unescape(&escape(p)).unwrap(), p);
        }
        assert_eq!(escape(b"a b%"), "a%20b%25");
        assert!(unescape("%G0").is_none() && unescape("%4").is_none());
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"a/../b",
            b"..",
            b"./a",
            b"a//b",
            b"a/",
        ] {
            assert!(!safe_relative(bad), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(safe_relative(b"a/b/c") && safe_relative(b"..a/b.."));
    }
}

/// Removes files a cut-off pull left half-received under `root` (not following symlinks).
pub fn remove_staging(root: &Path) -> std::io::Result<u64> {
    let mut removed = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir)? {
            let item = item?;
            let ft = item.file_type()?;
            if ft.is_dir() {
                dirs.push(item.path());
            } else if ft.is_file() && is_staging(item.file_name().as_bytes()) {
                std::fs::remove_file(item.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}
