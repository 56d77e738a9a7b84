//! The `maildird` binary: parse the command line, call into the library, map
//! errors to exit codes (0 ok, 1 runtime failure, 2 config/usage error).

use std::process::ExitCode;

use clap::Parser;
use maildird::cli::{Cli, Command};
use maildird::{admin, cli, daemon, logging, output, tunnel};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Serve { inetd } => {
            logging::init();
            daemon::serve(&cli.config, inetd)
        }
        Command::CheckConfig => admin::check_config(&cli.config),
        Command::User(cmd) => admin::user(&cli.config, cmd),
        Command::HashPassword { password_stdin } => admin::hash_password(password_stdin),
        Command::Tunnel { filters, target } => tunnel::run(&cli.config, &filters, &target),
        Command::Status { json } => admin::status(&cli.config, json),
        Command::Who { json } => admin::who(&cli.config, json),
        Command::Kick { id, user, ip } => admin::kick(&cli.config, id, user, ip),
        Command::Events { json } => admin::events(&cli.config, json),
        Command::Completions { shell } => output::print(&cli::completion_script(shell)).map(drop),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::note(&format!("maildird: {e}"));
            ExitCode::from(e.exit_code())
        }
    }
}
