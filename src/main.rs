use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ddrep::cli::Cli::parse();
    match ddrep::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
