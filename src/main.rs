//! The `airlock` binary: parse, set up logging, run, map to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = airlock::cli::Cli::parse();
    airlock::cli::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = airlock::cli::run(cli) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Dropping the runtime cancels every task; their temporary files are
    // removed as they drop, and nothing unverified was ever renamed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Some(Ok(code)) => code,
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(airlock::cli::exit_code(&e))
        }
        None => {
            eprintln!(
                "interrupted: what was complete is kept; run the same command again to finish"
            );
            ExitCode::from(130)
        }
    }
}
