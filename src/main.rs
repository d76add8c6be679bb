//! The `regmirror` binary: parse arguments, install logging, run, map errors to exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    regmirror::cli::main()
}
