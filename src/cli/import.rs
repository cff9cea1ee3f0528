//! `airlock import`: bundle to registry.

use std::process::ExitCode;

use clap::Args;

use crate::progress::Verbosity;

#[derive(Debug, Args)]
pub struct ImportArgs {}

pub async fn run(_args: ImportArgs, _verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
