//! The command line: arguments, logging, and one module per subcommand.

mod export;
mod import;
mod inspect;
mod verify;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::progress::Verbosity;
use crate::registry::auth::{CredentialSource, Credentials};
use crate::registry::retry::RetryPolicy;
use crate::registry::{Client, ConnectOptions};

/// Move container images across an air gap.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More detail on stderr (-v, -vv, -vvv); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors; no progress and no summary.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pull images from registries into a bundle.
    Export(export::ExportArgs),
    /// Push the images of a bundle to a registry.
    Import(import::ImportArgs),
    /// Check every part and blob of a bundle, offline.
    Verify(verify::VerifyArgs),
    /// Show the images, platforms, sizes and parts of a bundle.
    Inspect(inspect::InspectArgs),
}

/// How to reach registries; shared by export and import.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Use HTTP instead of HTTPS (loopback and lab registries).
    #[arg(long)]
    plain_http: bool,
    /// Use HTTPS without checking certificates.
    #[arg(long)]
    insecure: bool,
    /// Trust the CA certificates in this PEM file as well.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// User name for every registry of this run (password from stdin).
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the password (or token) for --username from standard input.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Blobs in flight at once.
    #[arg(short = 'j', long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Retries of a failed request (429, 5xx, dropped connections).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=20))]
    retries: u32,
}

impl ConnectArgs {
    /// Builds the registry client these arguments describe.
    pub fn client(&self) -> anyhow::Result<Client> {
        let explicit = match &self.username {
            Some(username) => {
                let mut password = String::new();
                std::io::stdin()
                    .read_to_string(&mut password)
                    .map_err(|e| usage(format!("cannot read the password from stdin: {e}")))?;
                let password = password.trim_end_matches(['\r', '\n']).to_string();
                if password.is_empty() {
                    return Err(usage("--password-stdin got an empty password"));
                }
                Some(Credentials {
                    username: username.clone(),
                    password,
                })
            }
            None => None,
        };
        // A CA file that cannot be used is a mistake in the command line.
        Client::new(ConnectOptions {
            plain_http: self.plain_http,
            insecure: self.insecure,
            ca_file: self.ca_file.clone(),
            credentials: CredentialSource { explicit },
            retry: RetryPolicy::with_retries(self.retries),
        })
        .map_err(|e| usage(crate::error_chain(&e)))
    }

    pub fn jobs(&self) -> usize {
        self.jobs as usize
    }
}

/// A mistake in how airlock was called: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Wraps a message as a usage error.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// The exit code for an error that ended a run.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
}

impl Cli {
    fn verbosity(&self) -> Verbosity {
        match (self.quiet, self.verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            _ => Verbosity::Verbose,
        }
    }
}

/// Logs go to stderr; -v levels and RUST_LOG choose how much.
pub fn init_logging(cli: &Cli) {
    // Transport crates stay at info even with -vvv: their trace output
    // could show headers, and headers carry credentials.
    // rustls logs every failed certificate check as an error of its own;
    // airlock reports the failure once, with the reference.
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error,rustls=off",
        (false, 0) => "warn,rustls=off",
        (false, 1) => "airlock=info,warn",
        (false, 2) => "airlock=debug,info",
        _ => "airlock=trace,info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // From -vv on, lines carry the time since start: enough to see where
    // the seconds of a run go.
    if cli.verbose >= 2 {
        logs.with_timer(tracing_subscriber::fmt::time::uptime())
            .init();
    } else {
        logs.without_time().init();
    }
}

/// Runs the chosen subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let verbosity = cli.verbosity();
    match cli.command {
        Command::Export(args) => export::run(args, verbosity).await,
        Command::Import(args) => import::run(args, verbosity).await,
        Command::Verify(args) => verify::run(args, verbosity).await,
        Command::Inspect(args) => inspect::run(args, verbosity).await,
    }
}

/// Prints the failures of a run and picks its exit code.
pub fn report_failures(failed: &[(String, String)], total: usize, verb: &str) -> ExitCode {
    if failed.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "error: {} of {total} images could not be {verb}:",
        failed.len()
    );
    for (name, why) in failed {
        eprintln!("  {name}: {why}");
    }
    if failed.iter().any(|(_, why)| why.contains("os error 28")) {
        eprintln!(
            "hint: the disk is full. Free some space and run the same command again; \
             what is complete is kept."
        );
    }
    ExitCode::from(1)
}
