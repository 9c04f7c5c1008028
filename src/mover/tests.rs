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
    assert_eq!(
        manifest::remove_staging(dst.path()).unwrap(),
        0,
        "nothing half-received left"
    );
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

#[test]
fn a_pull_cut_off_mid_copy_leaves_nothing_half_written_and_the_next_one_finishes() {
    use std::io::{Read, Write};
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fill(src.path());
    std::fs::write(src.path().join("big"), vec![7u8; 3 << 20]).unwrap();
    let keys = MoveKeys::generate().unwrap();
    // a relay that passes the TLS bytes on but cuts the connection after 1.5 MB from the source
    let (addr, server) = serving(src.path(), &keys, 2);
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    let relay_thread = std::thread::spawn(move || {
        let (mut down, _) = relay.accept().unwrap();
        let mut up = std::net::TcpStream::connect(&addr).unwrap();
        let (mut down2, mut up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        let to_source = std::thread::spawn(move || {
            let _ = std::io::copy(&mut down2, &mut up2);
        });
        let mut sent = 0usize;
        let mut buf = [0u8; 16 << 10];
        while sent < 1_500_000 {
            let n = up.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            down.write_all(&buf[..n]).unwrap();
            sent += n;
        }
        let _ = down.shutdown(std::net::Shutdown::Both);
        let _ = up.shutdown(std::net::Shutdown::Both);
        let _ = to_source.join();
        addr
    });
    let err = pull(
        dst.path(),
        &relay_addr,
        tls::client_config(&keys).unwrap(),
        1,
    )
    .unwrap_err();
    let addr = relay_thread.join().unwrap();
    assert!(
        matches!(err.category(), "network" | "protocol" | "tls"),
        "{err}"
    );
    // whatever arrived is complete and correct; nothing partial is in place
    let source = scan(src.path()).unwrap();
    let partial = scan(dst.path()).unwrap();
    for e in partial
        .entries
        .iter()
        .filter(|e| e.kind == manifest::Kind::File)
    {
        assert_eq!(
            source.get(&e.path),
            Some(e),
            "{} arrived half or wrong",
            e.path
        );
    }
    assert!(
        partial.totals().files < source.totals().files,
        "the cut came before the end"
    );
    // the next pull finishes the move
    let done = pull(dst.path(), &addr, tls::client_config(&keys).unwrap(), 1).unwrap();
    assert!(done.files_fetched > 0);
    assert_eq!(scan(dst.path()).unwrap().digest(), source.digest());
    assert_eq!(
        manifest::remove_staging(dst.path()).unwrap(),
        0,
        "nothing half-received left"
    );
    server.join().unwrap();
}

#[test]
fn a_source_cannot_make_a_destination_write_outside_its_volume() {
    let (src, dst, outside) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    // on the source, "escape" is a directory with a file in it ...
    std::fs::create_dir(src.path().join("escape")).unwrap();
    std::fs::write(src.path().join("escape/evil"), b"evil").unwrap();
    // ... and on the destination a symlink of that name points outside the volume
    std::os::unix::fs::symlink(outside.path(), dst.path().join("escape")).unwrap();
    let keys = MoveKeys::generate().unwrap();
    let (addr, server) = serving(src.path(), &keys, 1);
    let report = pull(dst.path(), &addr, tls::client_config(&keys).unwrap(), 1).unwrap();
    server.join().unwrap();
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written outside"
    );
    assert_eq!(
        report.removed, 1,
        "the symlink of another kind was removed first"
    );
    assert_eq!(
        scan(dst.path()).unwrap().digest(),
        scan(src.path()).unwrap().digest()
    );
}
