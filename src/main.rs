//! The residency-operator command line. All logic lives in the library.
use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    let cli = residency_operator::cli::Cli::parse();
    std::process::exit(residency_operator::cli::run(cli)?)
}
