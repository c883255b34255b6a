//! The `docklock` binary; see the library crate for its layout.
//!
//! Exit codes: 0 success; 1 a request failed or a node is unreachable; 2 bad
//! usage or invalid argument; 3 not found; 4 a precondition failed
//! (compare-and-set refused).

use std::process::ExitCode;

use clap::Parser;
use docklock_node::cli;

fn main() -> ExitCode {
    let command = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", cli::one_line(&error));
            ExitCode::from(cli::exit_code(&error))
        }
    }
}
