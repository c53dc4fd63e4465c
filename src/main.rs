//! The `dispatcher` command: parses the command line and calls the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Runner supervisors are this binary in a hidden mode; they never return from here.
    dispatcher::supervisor::run_if_requested();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let args = cli::Cli::parse();
    match cli::execute(&args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("dispatcher: error: {}", cli::describe(&err));
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
