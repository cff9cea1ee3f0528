//! `airlock inspect`: describe a bundle.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::bundle::Bundle;
use crate::inspect::inspect;
use crate::progress::Verbosity;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle: a layout directory, or an archive's index, NAME or a part.
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: InspectArgs, _verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::open(&args.bundle)
        .with_context(|| format!("cannot read bundle {}", args.bundle.display()))?;
    let inspection = inspect(&bundle);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
    } else {
        print!("{}", inspection.to_text());
    }
    Ok(ExitCode::SUCCESS)
}
