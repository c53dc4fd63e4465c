//! The runner supervisor as a program of its own: the same code as `dispatcher __supervise`,
//! linked without the rest of the dispatcher, so that the start paid once per runner is
//! cheaper. The dispatcher uses it when it sits beside the `dispatcher` executable.

use std::process::ExitCode;

use dispatcher::supervisor::{self, SUPERVISE_ARG};

fn main() -> ExitCode {
    // A supervisor never returns from here.
    supervisor::run_if_requested();
    if std::env::args_os().nth(1).is_some_and(|a| a == "--version") {
        println!("{}", supervisor::supervisor_version());
        return ExitCode::SUCCESS;
    }
    eprintln!("dispatcher-supervisor: only the dispatcher starts it ({SUPERVISE_ARG} RUNNER_DIR)");
    ExitCode::from(2)
}
