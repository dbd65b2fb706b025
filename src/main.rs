//! The `nftpol` binary: parses the command line and runs the command.

use clap::Parser;

fn main() {
    let cli = nftpol::cli::Cli::parse();
    std::process::exit(nftpol::cli::run(cli));
}
