//! `airlock inspect`: describe a bundle.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::bundle::Bundle;
use crate::inspect::{diff, inspect};
use crate::progress::Verbosity;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle: a layout directory, or an archive's index, NAME or a part.
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    json: bool,
    /// Compare with a newer bundle: images added, removed, changed, and
    /// the bytes an incremental bundle would carry.
    #[arg(long, value_name = "NEW")]
    diff: Option<PathBuf>,
}

pub async fn run(args: InspectArgs, _verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::open(&args.bundle)
        .with_context(|| format!("cannot read bundle {}", args.bundle.display()))?;
    if let Some(new) = &args.diff {
        let newer =
            Bundle::open(new).with_context(|| format!("cannot read bundle {}", new.display()))?;
        let d = diff(&bundle, &newer)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&d)?);
        } else {
            print!("{}", d.to_text());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let inspection = inspect(&bundle);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
    } else {
        print!("{}", inspection.to_text());
    }
    Ok(ExitCode::SUCCESS)
}
