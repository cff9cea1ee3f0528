//! `airlock verify`: check a bundle offline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::bundle::Bundle;
use crate::progress::{Verbosity, human_bytes, rate};
use crate::verify::{verify_archive, verify_layout};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle: a layout directory, or an archive's index, NAME or a part.
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,
}

pub async fn run(args: VerifyArgs, verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::open(&args.bundle)
        .with_context(|| format!("cannot read bundle {}", args.bundle.display()))?;
    let report = tokio::task::spawn_blocking(move || match &bundle {
        Bundle::Layout(l, base) => verify_layout(l, base.as_ref()),
        Bundle::Archive { archive, .. } => verify_archive(archive),
    })
    .await?;

    // Problems go to stdout, like a checker's findings; the summary to stderr.
    for (number, path, problem) in &report.parts {
        match problem {
            Some(p) => println!("part {number:04} ({path}): {p}"),
            None if verbosity == Verbosity::Verbose => println!("part {number:04} ({path}): ok"),
            None => {}
        }
    }
    for (digest, why) in &report.bad_blobs {
        println!("blob {digest}: {why}");
    }
    for (name, why) in &report.bad_images {
        println!("image {name}: {why}");
    }
    if let Some(base) = &report.base {
        println!(
            "incremental: builds on {}; needs {} blobs ({}) that it leaves out, already in the target",
            base.builds_on,
            base.omitted.len(),
            human_bytes(base.bytes())
        );
    }
    if verbosity != Verbosity::Quiet {
        let parts = if report.parts.is_empty() {
            String::new()
        } else {
            let bad = report.parts.iter().filter(|p| p.2.is_some()).count();
            format!("{} parts ({bad} bad), ", report.parts.len())
        };
        eprintln!(
            "verify: {}: {parts}{} blobs ({} bad), {} images ({} affected), {} read in {:.1} s, {}",
            if report.ok() { "ok" } else { "FAILED" },
            report.blobs,
            report.bad_blobs.len(),
            report.images,
            report.bad_images.len(),
            human_bytes(report.bytes),
            report.seconds,
            rate(
                report.bytes,
                std::time::Duration::from_secs_f64(report.seconds)
            ),
        );
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
