//! The residency-operator command line. All logic lives in the library.
use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    few_malloc_arenas();
    let cli = residency_operator::cli::Cli::parse();
    std::process::exit(residency_operator::cli::run(cli)?)
}

/// glibc gives each thread that allocates concurrently an arena of its own, up to eight per
/// core, and memory freed in one is not reused by another: a busy operator's resident memory
/// grows with the arenas, not with what it holds. Two arenas keep it near what it holds, at a
/// little contention on the allocator. `MALLOC_ARENA_MAX` in the environment still decides.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn few_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread exists; mallopt only
        // sets a limit in the allocator's parameters.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn few_malloc_arenas() {}
