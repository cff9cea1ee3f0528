//! `airlock import`: bundle to registry.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::{ConnectArgs, report_failures, usage};
use crate::bundle::Bundle;
use crate::import::{ImportOptions, import_bundle, plan};
use crate::progress::{Progress, Verbosity};
use crate::reference::Target;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The bundle: a layout directory, or an archive's index, NAME or a part.
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,
    /// The registry, and optionally a repository prefix, to push to.
    #[arg(long, value_name = "REGISTRY[/PREFIX]")]
    to: String,
    /// Import only this image of the bundle (repeatable).
    #[arg(long = "image", value_name = "REF")]
    images: Vec<String>,
    /// Say what would be pushed; push nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub async fn run(args: ImportArgs, verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    let target = Target::parse(&args.to).map_err(|e| usage(crate::error_chain(&e)))?;
    let bundle = Arc::new(
        Bundle::open(&args.bundle)
            .with_context(|| format!("cannot read bundle {}", args.bundle.display()))?,
    );
    if let Bundle::Archive { archive, bad_parts } = bundle.as_ref() {
        for (number, problem) in bad_parts {
            eprintln!(
                "warning: part {} ({}): {problem}",
                crate::archive::part_label(*number),
                archive.paths.part(*number).display()
            );
        }
    }
    let client = args.connect.client()?;
    let options = ImportOptions {
        target,
        only: args.images.clone(),
        dry_run: args.dry_run,
        jobs: args.connect.jobs(),
    };

    let (planned, mut failed) = plan(&bundle, &options)?;
    if planned.is_empty() && failed.is_empty() {
        anyhow::bail!("bundle {} names no images", bundle.describe());
    }
    let total = planned.len() + failed.len();
    if args.dry_run && verbosity != Verbosity::Quiet {
        for image in &planned {
            eprintln!("{} -> {}", image.name, image.target.name());
        }
    }
    let progress = Progress::new(verbosity, "total");
    let mut report = import_bundle(&client, &bundle, planned, &options, &progress).await;
    failed.append(&mut report.failed);
    if verbosity != Verbosity::Quiet {
        eprintln!("{}", report.summary());
    }
    Ok(report_failures(&failed, total, "imported"))
}
