//! `chorusctl`, the Chorus command line: parses arguments, runs one command on a
//! small runtime and turns the outcome into an exit code. Thin on purpose; the work
//! lives in the modules below.

mod args;
mod commands;
mod events;
mod failure;
mod output;
mod timefmt;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(failure::EXIT_FAILED);
        }
    };
    let code = match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(err) => failure::report(&err),
    };
    ExitCode::from(code)
}
