//! `airlock export`: registry to bundle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::{ConnectArgs, report_failures, usage};
use crate::archive::write::export_to_archive;
use crate::archive::{ArchivePaths, ChunkSize};
use crate::base::Base;
use crate::convert::Schema1Mode;
use crate::export::{ExportOptions, dedupe, export_to_layout, parse_list_file};
use crate::layout::Layout;
use crate::lock::{Lock, LockOptions};
use crate::platform::Platform;
use crate::progress::{Progress, Verbosity};
use crate::reference::ImageRef;
use crate::referrers::ReferrerOptions;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Images to export (`alpine:3.20`, `host:5000/app@sha256:...`).
    #[arg(value_name = "IMAGE")]
    images: Vec<String>,
    /// Also export the images listed in this file, one a line, # comments.
    #[arg(short = 'f', long = "file", value_name = "LIST")]
    list: Option<PathBuf>,
    /// The bundle to write: an OCI image-layout directory, or with a `.tar`
    /// name (or --chunk-size) an archive of parts NAME.0001.tar, ...
    #[arg(short, long, value_name = "DIR|NAME.tar")]
    output: PathBuf,
    /// Write an archive whose parts are at most this large: bytes, 64MiB,
    /// 700MB, or a preset: fat32 (the default), cd, dvd, bd25, none.
    #[arg(long, value_name = "SIZE")]
    chunk_size: Option<String>,
    /// Keep only these platforms (os/arch[/variant]); repeat or use commas.
    #[arg(long, value_name = "PLATFORM")]
    platform: Vec<String>,
    /// Record key=value on the index.json entries this run writes.
    #[arg(long, value_name = "KEY=VALUE")]
    annotation: Vec<String>,
    /// Legacy schema1 images: convert to `oci` (default) or `docker` v2s2,
    /// or `keep` them unconverted (most tools cannot read those).
    #[arg(long, value_enum, default_value_t = Schema1Mode::Oci)]
    schema1: Schema1Mode,
    /// Leave out signatures, SBOMs and attestations (referrers and cosign
    /// tags), which are carried by default.
    #[arg(long)]
    no_referrers: bool,
    /// Carry only referrers of this artifact type (repeatable); cosign's
    /// tags are `cosign.sig`, `cosign.att`, `cosign.sbom`.
    #[arg(long, value_name = "TYPE", conflicts_with = "no_referrers")]
    referrers_type: Vec<String>,
    /// Write a lock file listing each image's digest and the options, to
    /// export exactly the same bundle again later with --from-lock.
    #[arg(long, value_name = "FILE")]
    lock: Option<PathBuf>,
    /// Export exactly the digests a lock file lists, never what a tag
    /// points to today; the bundle is byte-identical to the first.
    #[arg(long, value_name = "FILE", conflicts_with = "lock")]
    from_lock: Option<PathBuf>,
    /// Leave out the blobs an earlier bundle (a layout, an archive, or a
    /// lock file) already carried: an incremental bundle.
    #[arg(long, value_name = "OLD")]
    since: Option<PathBuf>,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub async fn run(args: ExportArgs, verbosity: Verbosity) -> anyhow::Result<ExitCode> {
    let lock = match &args.from_lock {
        Some(path) => Some(Lock::read(path).map_err(|e| usage(crate::error_chain(&e)))?),
        None => None,
    };
    let (references, mut options, lock_chunk) = match &lock {
        Some(lock) => from_lock(&args, lock)?,
        None => {
            let platforms =
                Platform::parse_list(&args.platform).map_err(|e| usage(crate::error_chain(&e)))?;
            let options = ExportOptions {
                platforms,
                annotations: parse_annotations(&args.annotation)?,
                jobs: args.connect.jobs(),
                schema1: args.schema1,
                referrers: ReferrerOptions {
                    enabled: !args.no_referrers,
                    types: args.referrers_type.clone(),
                },
                since: None,
                locked_referrers: None,
            };
            (collect_references(&args)?, options, None)
        }
    };
    if let Some(old) = &args.since {
        let base = Base::load(old).map_err(|e| {
            usage(format!(
                "--since {}: {}",
                old.display(),
                crate::error_chain(&e)
            ))
        })?;
        options.since = Some(Arc::new(base));
    }
    let client = args.connect.client()?;
    let progress = Progress::new(verbosity, "total");

    let archive = args.chunk_size.is_some()
        || lock_chunk.is_some()
        || args.output.extension().is_some_and(|e| e == "tar");
    let (exported, failed, chunk_size) = if archive {
        let chunk = match (&args.chunk_size, lock_chunk) {
            (Some(text), _) => ChunkSize::parse(text).map_err(|e| usage(crate::error_chain(&e)))?,
            (None, Some(bytes)) => ChunkSize(bytes),
            (None, None) => ChunkSize::FAT32,
        };
        let paths = ArchivePaths::for_output(&args.output);
        let report = export_to_archive(&client, &paths, &references, &options, chunk.0, &progress)
            .await
            .with_context(|| format!("cannot write archive {}", paths.stem.display()))?;
        if verbosity != Verbosity::Quiet {
            eprintln!("{}", report.summary());
        }
        (report.export.exported, report.export.failed, Some(chunk.0))
    } else {
        let existed = args.output.join("oci-layout").exists();
        let layout = Layout::create(&args.output)
            .with_context(|| format!("cannot use {} as the bundle", args.output.display()))?;
        let report = export_to_layout(&client, &layout, &references, &options, &progress).await?;
        if !existed && report.exported.is_empty() {
            // Nothing came of a new bundle: leave no empty layout behind.
            layout.remove();
        }
        if verbosity != Verbosity::Quiet {
            eprintln!("{}", report.summary());
        }
        (report.exported, report.failed, None)
    };

    if let Some(path) = &args.lock {
        if failed.is_empty() {
            let lock = Lock::of(
                &exported,
                LockOptions {
                    platforms: options.platforms.iter().map(|p| p.to_string()).collect(),
                    annotations: options.annotations.clone(),
                    schema1: options.schema1,
                    chunk_size,
                },
            );
            lock.write(path)
                .with_context(|| format!("cannot write lock file {}", path.display()))?;
        } else {
            eprintln!(
                "warning: no lock file written to {}: not every image was exported",
                path.display()
            );
        }
    }
    let total = references.len() + options.locked_referrers.as_ref().map_or(0, Vec::len);
    Ok(report_failures(&failed, total, "exported"))
}

/// The references and options a lock pins: every image by the digest the
/// registry served, its referrers from the lock.
fn from_lock(
    args: &ExportArgs,
    lock: &Lock,
) -> anyhow::Result<(Vec<ImageRef>, ExportOptions, Option<u64>)> {
    if !args.images.is_empty() || args.list.is_some() {
        return Err(usage(
            "--from-lock exports the lock's images; name no others",
        ));
    }
    if !args.platform.is_empty() || !args.annotation.is_empty() || !args.referrers_type.is_empty() {
        return Err(usage(
            "--from-lock takes platforms, annotations and referrers from the lock; \
             drop --platform, --annotation and --referrers-type",
        ));
    }
    let mut references = Vec::new();
    let mut referrers = Vec::new();
    for image in &lock.images {
        if image.subject.is_some() {
            referrers.push(image.clone());
            continue;
        }
        let r = ImageRef::parse(&image.reference).map_err(|e| usage(crate::error_chain(&e)))?;
        references.push(r.with_digest(image.digest.clone()));
    }
    let platforms =
        Platform::parse_list(&lock.options.platforms).map_err(|e| usage(crate::error_chain(&e)))?;
    let options = ExportOptions {
        platforms,
        annotations: lock.options.annotations.clone(),
        jobs: args.connect.jobs(),
        schema1: lock.options.schema1,
        referrers: ReferrerOptions {
            enabled: false,
            types: Vec::new(),
        },
        since: None,
        locked_referrers: (!args.no_referrers).then_some(referrers),
    };
    Ok((references, options, lock.options.chunk_size))
}

fn collect_references(args: &ExportArgs) -> anyhow::Result<Vec<ImageRef>> {
    let mut refs = Vec::new();
    for image in &args.images {
        refs.push(ImageRef::parse(image).map_err(|e| usage(crate::error_chain(&e)))?);
    }
    if let Some(path) = &args.list {
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read image list {}: {e}", path.display())))?;
        for (line, entry) in parse_list_file(&text) {
            let r = ImageRef::parse(&entry).map_err(|e| {
                usage(format!(
                    "{}:{line}: {}",
                    path.display(),
                    crate::error_chain(&e)
                ))
            })?;
            refs.push(r);
        }
    }
    if refs.is_empty() {
        return Err(usage(
            "no images given: name them as arguments or with -f LIST",
        ));
    }
    Ok(dedupe(refs))
}

fn parse_annotations(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(usage(format!(
                "invalid --annotation {item:?}: expected KEY=VALUE"
            ))),
        })
        .collect()
}
