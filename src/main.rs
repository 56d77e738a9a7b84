//! The `maildird` binary: parse the command line, call into the library, map
//! errors to exit codes (0 ok, 1 runtime failure, 2 config/usage error).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match maildird::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let _ = cli;
    ExitCode::SUCCESS
}
