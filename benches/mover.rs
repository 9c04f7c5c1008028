//! The data mover's throughput between two host directories, against a plain copy (`cp -a`) of
//! the same files between the same kind of directories, measured in the same run.
//!
//! The data: 1,200 files and about 230 MB - nested directories, one 120 MB file, empty files, a
//! sparse file, symlinks, names with spaces and non-ASCII characters. The mover serves the source
//! on loopback and pulls it over mutual TLS (the move's keys), checking every file's SHA-256 on
//! arrival; then each side's manifest is computed independently (the verification pass) and the
//! digests must be equal. `cargo bench --bench mover`.

use std::io::{Seek, Write};
use std::path::Path;
use std::time::Instant;

use residency_operator::mover::{manifest, tls, transfer};

fn dataset(root: &Path) -> u64 {
    let mut bytes = 0u64;
    let mut write = |p: &Path, data: &[u8]| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
        bytes += data.len() as u64;
    };
    // one big file: 120 MB of varied bytes
    let big: Vec<u8> = (0..120_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write(&root.join("archive/samples-2026.bin"), &big);
    // 1,100 small and medium files in nested directories, some names with spaces and non-ASCII
    for i in 0..1100u32 {
        let dir = root.join(format!(
            "region {}/customer-{}/Zürich-{}",
            i % 7,
            i % 31,
            i % 3
        ));
        let size = match i % 10 {
            0 => 0,
            1..=6 => 4_000 + (i as usize * 97) % 20_000,
            _ => 200_000 + (i as usize * 7919) % 100_000,
        };
        let data: Vec<u8> = (0..size)
            .map(|j| ((j as u32).wrapping_mul(i + 1) >> 3) as u8)
            .collect();
        write(&dir.join(format!("sample {i} 日本.dat")), &data);
    }
    // a sparse file (64 MiB apparent, a few bytes written) and symlinks
    let mut sparse = std::fs::File::create(root.join("sparse.img")).unwrap();
    sparse.seek(std::io::SeekFrom::Start(64 << 20)).unwrap();
    sparse.write_all(b"tail").unwrap();
    for i in 0..100 {
        std::os::unix::fs::symlink(
            format!("region {}/customer-0", i % 7),
            root.join(format!("link-{i}")),
        )
        .unwrap();
    }
    bytes
}

fn main() {
    let base = std::env::var("CARGO_TARGET_TMPDIR")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let work = tempfile::tempdir_in(base).unwrap();
    let (src, plain, moved) = (
        work.path().join("src"),
        work.path().join("plain"),
        work.path().join("moved"),
    );
    std::fs::create_dir_all(&src).unwrap();
    let bytes = dataset(&src);
    let source = manifest::scan(&src).unwrap();
    let t = source.totals();
    println!(
        "data: {} files, {} directories, {} symlinks, {:.1} MB in files",
        t.files,
        t.dirs,
        t.symlinks,
        t.bytes as f64 / 1e6
    );
    let mb = bytes as f64 / 1e6;

    // the bound: a plain copy between two host directories
    let start = Instant::now();
    let status = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&src)
        .arg(&plain)
        .status()
        .unwrap();
    assert!(status.success());
    let plain_s = start.elapsed().as_secs_f64();

    // the mover: serve + pull over mutual TLS on loopback, every file checked on arrival
    let keys = tls::MoveKeys::generate().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (root, config) = (src.clone(), tls::server_config(&keys).unwrap());
    let server =
        std::thread::spawn(move || transfer::serve(&root, listener, config, Some(2)).unwrap());
    std::fs::create_dir_all(&moved).unwrap();
    let start = Instant::now();
    let report = transfer::pull(&moved, &addr, tls::client_config(&keys).unwrap(), 2).unwrap();
    let pull_s = start.elapsed().as_secs_f64();
    server.join().unwrap();

    // the verification pass: each side's manifest, computed independently
    let start = Instant::now();
    let (a, b) = (
        manifest::scan(&src).unwrap(),
        manifest::scan(&moved).unwrap(),
    );
    let verify_s = start.elapsed().as_secs_f64();
    assert_eq!(
        a.digest(),
        b.digest(),
        "{:?}",
        manifest::differences(&a, &b, 5)
    );
    assert_eq!(report.source_digest, a.digest());

    println!(
        "plain copy (cp -a):            {:>7.2} s  {:>7.1} MB/s",
        plain_s,
        mb / plain_s
    );
    println!(
        "mover pull (TLS, 2 streams): {:>7.2} s  {:>7.1} MB/s  ratio to the plain copy {:.2}",
        pull_s,
        mb / pull_s,
        plain_s / pull_s
    );
    println!(
        "verification (both manifests): {:.2} s; move + verify {:.1} MB/s, ratio {:.2}; digest {}",
        verify_s,
        mb / (pull_s + verify_s),
        plain_s / (pull_s + verify_s),
        &a.digest()[..16]
    );
}
