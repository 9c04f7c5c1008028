//! The mover end to end in one process: a source served on loopback, destinations pulling over
//! mutual TLS with the move's keys.

use std::net::TcpListener;
use std::path::Path;

use super::manifest::{self, differences, scan};
use super::tls::{self, MoveKeys};
use super::transfer::{pull, serve};

fn serving(
    root: &Path,
    keys: &MoveKeys,
    connections: usize,
) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (root, config) = (root.to_path_buf(), tls::server_config(keys).unwrap());
    let h = std::thread::spawn(move || serve(&root, listener, config, Some(connections)).unwrap());
    (addr, h)
}

fn fill(root: &Path) {
    manifest::tests_support::shapes(root);
    for i in 0..50 {
        let dir = root.join(format!("batch {}", i % 5));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), vec![i as u8; 1000 + i * 37]).unwrap();
    }
}

#[test]
fn a_pull_copies_every_shape_then_only_what_changed() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fill(src.path());
    let keys = MoveKeys::generate().unwrap();
    let client = tls::client_config(&keys).unwrap();
    let (addr, server) = serving(src.path(), &keys, 2 + 1 + 2);

    let first = pull(dst.path(), &addr, client.clone(), 2).unwrap();
    let source = scan(src.path()).unwrap();
    assert_eq!(first.source_digest, source.digest());
    let copied = scan(dst.path()).unwrap();
    assert_eq!(
        copied.digest(),
        source.digest(),
        "{:?}",
        differences(&source, &copied, 5)
    );
    assert_eq!(first.files_fetched, source.totals().files);
    assert!(!dst.path().join(manifest::STAGING_DIR).exists());
    // the sparse file stays sparse
    use std::os::unix::fs::MetadataExt;
    let sparse = std::fs::metadata(dst.path().join("sparse")).unwrap();
    assert_eq!(sparse.len(), (10 << 20) + 3);
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "{} blocks",
        sparse.blocks()
    );

    // nothing changed: nothing fetched
    let again = pull(dst.path(), &addr, client.clone(), 1).unwrap();
    assert_eq!((again.files_fetched, again.removed), (0, 0));
    assert_eq!(scan(dst.path()).unwrap().digest(), source.digest());

    // one changed, one removed, one added on the source (and a stray file on the destination)
    std::fs::write(src.path().join("batch 0/f0"), b"new content").unwrap();
    std::fs::remove_file(src.path().join("batch 1/f1")).unwrap();
    std::fs::write(src.path().join("added"), b"added").unwrap();
    std::fs::write(dst.path().join("stray"), b"stray").unwrap();
    let third = pull(dst.path(), &addr, client, 2).unwrap();
    let source = scan(src.path()).unwrap();
    assert_eq!(scan(dst.path()).unwrap().digest(), source.digest());
    assert_eq!((third.files_fetched, third.removed), (2, 2));
    server.join().unwrap();
}

#[test]
fn a_destination_without_the_moves_keys_gets_nothing() {
    let src = tempfile::tempdir().unwrap();
    fill(src.path());
    let keys = MoveKeys::generate().unwrap();
    let other = MoveKeys::generate().unwrap();
    let (addr, server) = serving(src.path(), &keys, 1);
    let dst = tempfile::tempdir().unwrap();
    let err = pull(dst.path(), &addr, tls::client_config(&other).unwrap(), 1).unwrap_err();
    assert!(
        matches!(err.category(), "network" | "tls" | "protocol"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(dst.path()).unwrap().count(),
        0,
        "nothing written"
    );
    server.join().unwrap();
}

#[test]
fn keys_round_trip_through_files() {
    let d = tempfile::tempdir().unwrap();
    let keys = MoveKeys::generate().unwrap();
    keys.write(d.path()).unwrap();
    let back = tls::read(d.path()).unwrap();
    assert_eq!(back.ca, keys.ca);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path().join("client.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(tls::server_config(&back).is_ok() && tls::client_config(&back).is_ok());
}

#[test]
fn a_byte_changed_on_a_destination_changes_its_digest_and_is_named() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fill(src.path());
    let keys = MoveKeys::generate().unwrap();
    let (addr, server) = serving(src.path(), &keys, 1);
    pull(dst.path(), &addr, tls::client_config(&keys).unwrap(), 1).unwrap();
    server.join().unwrap();
    let path = dst.path().join("batch 3/f3");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[500] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (s, d) = (scan(src.path()).unwrap(), scan(dst.path()).unwrap());
    assert_ne!(s.digest(), d.digest());
    let diff = differences(&s, &d, 10);
    assert_eq!(diff.len(), 1);
    assert_eq!(diff[0].path, "batch%203/f3");
}
