use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

// Tensor buffers are large and short-lived; glibc's malloc returns them to the kernel and
// page-faults them back in on every step, which cost ~45% of a SIREN Adam step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so `ddrep status x.yaml | head` made the next println! panic on
    // the closed pipe. With the default action the process ends quietly as other Unix tools
    // do; that is no worse than a kill at any moment, which every write here survives.
    #[cfg(unix)]
    // Safety: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match ddrep::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Usage errors on one line, like every other error of this program.
            let msg = e.to_string();
            eprintln!("{} (see --help)", msg.lines().next().unwrap_or("error: invalid arguments").trim_end());
            return ExitCode::from(2);
        }
    };
    match ddrep::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
