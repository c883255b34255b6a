//! The `docklock` binary; see the library crate for its layout.
//!
//! Exit codes: see README.md (0 success; 1 a request failed or a node is
//! unreachable; 2 bad usage; 3 not found; 4 a precondition failed; 5 a
//! proof does not verify; 6 already exists; 7 not authenticated or not
//! permitted; `cage run`: 10 program failed, 11 limit exceeded, 12 policy
//! violation, 13 refused, 14 cage error).

use std::process::ExitCode;

use clap::Parser;
use docklock_node::cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if cli.prints_only() {
        // SAFETY: restoring a signal's default action before any thread
        // exists; no handler runs.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL)
        };
    }
    let result = match cli.run_without_runtime() {
        Ok(result) => result,
        Err(command) => match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(cli::run(command)),
            Err(error) => {
                eprintln!("error: cannot start the async runtime: {error}");
                return ExitCode::from(1);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", cli::one_line(&error));
            ExitCode::from(cli::exit_code(&error))
        }
    }
}
