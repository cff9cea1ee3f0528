//! Export into an archive: blobs stream from the registry to their planned
//! place in the parts.
//!
//! Part files are created at their final size with every header, the
//! identity member and the metadata already in place; downloads then write
//! each blob's bytes at its planned offsets, so several blobs fill one part
//! at once and nothing is staged. A part is hashed as soon as its last blob
//! verified, and recorded in a state file: an interrupted export run again
//! with the same images keeps those parts. The index is written last.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::contents::{archive_index, base_info, contents};
use super::plan::{BLOCK, Content, Plan, header, plan};
use super::{ArchiveError, ArchiveIndex, ArchivePaths, part_label};
use crate::convert::convert_pending;
use crate::digest::{Digest, Sha256, Verifier};
use crate::export::{ExportOptions, ExportReport, resolve_all};
use crate::layout::Layout;
use crate::progress::{Progress, human_bytes, rate};
use crate::reference::ImageRef;
use crate::registry::{Client, RetryClass as _};

/// How much of a blob is gathered before it is written to its part.
const WRITE_BUFFER: usize = 1 << 20;

/// The outcome of an archive export.
#[derive(Debug, Default)]
pub struct ArchiveReport {
    pub export: ExportReport,
    pub parts: usize,
    pub parts_kept: usize,
    pub bytes: u64,
    pub up_to_date: bool,
}

impl ArchiveReport {
    /// The one-line summary every run ends with.
    pub fn summary(&self) -> String {
        let e = &self.export;
        let kept = if self.up_to_date {
            ", already up to date".to_string()
        } else if self.parts_kept > 0 {
            format!(", {} kept from an earlier run", self.parts_kept)
        } else {
            String::new()
        };
        format!(
            "exported {} image{} into {} part{} ({}{kept}): {} blobs fetched, {} in {:.1} s, {}",
            e.exported.len(),
            if e.exported.len() == 1 { "" } else { "s" },
            self.parts,
            if self.parts == 1 { "" } else { "s" },
            human_bytes(self.bytes),
            e.blobs_fetched,
            human_bytes(e.bytes_fetched),
            e.elapsed.as_secs_f64(),
            rate(e.bytes_fetched, e.elapsed),
        )
    }
}

/// The resume record of an unfinished export.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    bundle: String,
    /// Part number -> sha256 of the complete part.
    complete: BTreeMap<u32, String>,
}

/// Exports `references` into the archive at `paths`.
pub async fn export_to_archive(
    client: &Client,
    paths: &ArchivePaths,
    references: &[ImageRef],
    options: &ExportOptions,
    chunk_size: u64,
    progress: &Progress,
) -> Result<ArchiveReport, ArchiveError> {
    let dir = paths
        .stem
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    // Configs read to check a platform are kept here until they are copied
    // into their part; only small blobs ever land in it.
    let scratch_dir = tempfile::Builder::new()
        .prefix(".airlock-scratch-")
        .tempdir_in(&dir)
        .map_err(io_err(&dir))?;
    let scratch =
        Layout::create(scratch_dir.path()).map_err(|e| ArchiveError::Invalid(e.to_string()))?;

    let mut report = ArchiveReport::default();
    let images = resolve_all(
        client,
        &scratch,
        references,
        options,
        progress,
        &mut report.export,
        &|_| {},
    )
    .await;
    // Schema1 images are converted first: their manifests depend on their
    // layers' diff IDs, and the plan needs every manifest. Their layers
    // pass through the scratch layout on the way.
    let images = convert_pending(
        client,
        &scratch,
        images,
        options.jobs,
        progress,
        &mut report.export,
    )
    .await;
    if images.is_empty() {
        report.export.elapsed = progress.elapsed();
        return Ok(report);
    }

    let mtime = source_date_epoch();
    let (metadata, blobs) = contents(&images, &options.annotations, options.since.as_deref())?;
    let base = base_info(&images, options.since.as_deref());
    report.export.blobs_omitted = base.as_ref().map_or(0, |b| b.omitted.len());
    let meta_refs: Vec<(&str, Bytes)> = metadata.iter().map(|(p, b)| (*p, b.clone())).collect();
    let plan = plan(chunk_size, mtime, &meta_refs, &blobs)?;
    report.parts = plan.parts.len();
    report.bytes = plan.parts.iter().map(|p| p.size).sum();
    let index = archive_index(paths, &plan, &images, &[], base.clone());

    // Up to date: the same bundle is already complete on disk.
    if let Some(hashes) = complete_bundle(paths, &plan).await {
        report.up_to_date = true;
        report.parts_kept = plan.parts.len();
        write_final(paths, &archive_index(paths, &plan, &images, &hashes, base))?;
        report.export.exported = images;
        report.export.elapsed = progress.elapsed();
        return Ok(report);
    }
    remove_if_exists(&paths.index())?;
    remove_if_exists(&paths.checksums())?;

    let state = Arc::new(Mutex::new(kept_parts(paths, &plan).await));
    report.parts_kept = state.lock().expect("state lock").complete.len();
    save_state(paths, &state.lock().expect("state lock"))?;

    let files = Arc::new(open_parts(
        paths,
        &plan,
        &state.lock().expect("state lock"),
    )?);
    // Each unfinished part is hashed front to back as its bytes are
    // written, so its sha256 is ready soon after its last blob lands.
    let hashers = Hashers {
        paths: paths.clone(),
        state: state.clone(),
        parts: Arc::new(
            plan.parts
                .iter()
                .map(|p| {
                    files[p.number as usize - 1].is_some().then(|| PartSlot {
                        events: Mutex::new(Vec::new()),
                        hash: Mutex::new(PartHash::new(p, &plan, paths.part(p.number))),
                    })
                })
                .collect(),
        ),
        tasks: Arc::new(Mutex::new(Vec::new())),
        reports: Arc::new(Mutex::new(Vec::new())),
    };
    // Fetch the blobs whose bytes some unfinished part still lacks;
    // manifests were written with the part.
    let inline: std::collections::HashSet<&Digest> = blobs
        .iter()
        .filter(|b| b.inline.is_some())
        .map(|b| &b.digest)
        .collect();
    let mut wanted = Vec::new();
    for entry in &plan.blobs {
        let inline = inline.contains(&entry.digest);
        let needed = entry
            .pieces
            .iter()
            .any(|p| files[p.part as usize - 1].is_some());
        if needed && !inline {
            let image = images
                .iter()
                .position(|i| i.blobs.iter().any(|b| b.digest == entry.digest))
                .unwrap_or(0);
            wanted.push((entry.clone(), image));
        }
    }
    // Each part is hashed front to back, so its blobs are fetched front
    // first, and the parts keep pace with each other (in order of how far
    // into its part a blob starts): every part's hash moves on from the
    // start, and the biggest part is not left to hash alone at the end.
    let sizes: HashMap<u32, u64> = plan.parts.iter().map(|p| (p.number, p.size)).collect();
    let depth = |entry: &super::BlobEntry| {
        let first = entry.pieces[0];
        let size = sizes.get(&first.part).copied().unwrap_or(1).max(1);
        (u128::from(first.offset) << 32) / u128::from(size)
    };
    wanted.sort_by_key(|(entry, _)| depth(entry));
    let bars: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let bytes = wanted.iter().filter(|w| w.1 == i).map(|w| w.0.size).sum();
            progress.add_total(bytes);
            progress.image(&image.reference.name(), bytes)
        })
        .collect();
    let jobs = options.jobs.max(1);
    for p in &plan.parts {
        hashers.send(p.number, Event::Start);
    }
    // Blobs that lie whole in one part have their digest checked while the
    // part is hashed (one pass for both); one that fails it is fetched
    // again, as often as the retry budget allows.
    let mut fetched: HashMap<Digest, u64> = HashMap::new();
    let mut failures: HashMap<Digest, String> = HashMap::new();
    let mut round = 0;
    loop {
        let results: Vec<(Digest, Result<Fetched, String>)> = futures::stream::iter(wanted.clone())
            .map(|(entry, i)| {
                let client = client.clone();
                let source = images[i].reference.clone();
                let scratch = scratch.clone();
                let files = files.clone();
                let progress = progress.clone();
                let bar = bars[i].clone();
                let hashers = hashers.clone();
                async move {
                    let digest = entry.digest.clone();
                    let outcome = crate::on_task(async move {
                        fetch_into_parts(
                            &client,
                            &scratch,
                            &source,
                            &entry,
                            &files,
                            &hashers,
                            &|n| progress.advance(&bar, n),
                        )
                        .await
                    })
                    .await;
                    (digest, outcome)
                }
            })
            .buffer_unordered(jobs)
            .collect()
            .await;
        let mut corrupt = Vec::new();
        for (digest, outcome) in results {
            match outcome {
                Ok(Ok(size)) => {
                    fetched.insert(digest, size);
                }
                Ok(Err(why)) => corrupt.push((digest, why)),
                Err(e) => {
                    failures.insert(digest, e);
                }
            }
        }
        corrupt.extend(hashers.join().await?);
        // A blob whose transfer went wrong is rewound in its part, unless
        // its bytes had already passed their check there.
        let mut again = Vec::new();
        for (digest, why) in corrupt {
            let Some(entry) = plan.blobs.iter().find(|b| b.digest == digest) else {
                continue;
            };
            let piece = entry.pieces[0];
            if entry.pieces.len() == 1 && !hashers.rewind(piece.part, piece.offset) {
                fetched.insert(digest, entry.size);
                continue;
            }
            fetched.remove(&digest);
            again.push((digest, why));
        }
        if again.is_empty() {
            break;
        }
        round += 1;
        for (digest, why) in &again {
            if round > client.retries() {
                failures.insert(digest.clone(), why.clone());
            } else {
                tracing::warn!(
                    "blob {digest} arrived corrupted ({why}); fetching it again ({round}/{})",
                    client.retries()
                );
            }
        }
        if round > client.retries() {
            break;
        }
        wanted.retain(|(entry, _)| again.iter().any(|(d, _)| d == &entry.digest));
    }
    for bar in &bars {
        bar.finish_and_clear();
    }
    // Every part this run wrote reaches the disk before the index that
    // describes it is written.
    sync_parts(paths, &files).await?;

    for size in fetched.values() {
        report.export.blobs_fetched += 1;
        report.export.bytes_fetched += size;
    }
    if !failures.is_empty() {
        // Parts with holes stay unfinished; a re-run resumes from the state.
        for image in images {
            let why = image
                .blobs
                .iter()
                .find_map(|b| failures.get(&b.digest))
                .cloned()
                .unwrap_or_else(|| "the archive is incomplete: another image failed".to_string());
            report.export.failed.push((image.reference.name(), why));
        }
        report.export.elapsed = progress.elapsed();
        progress.finish();
        return Ok(report);
    }

    let hashes: Vec<String> = {
        let state = state.lock().expect("state lock");
        let mut hashes = Vec::new();
        for p in &plan.parts {
            // Every blob is in and checked, so every part hashed to its
            // end; an index is never written with a part it cannot vouch
            // for.
            let Some(sha) = state.complete.get(&p.number) else {
                return Err(ArchiveError::Invalid(format!(
                    "part {} was not hashed to its end; run the export again",
                    part_label(p.number)
                )));
            };
            hashes.push(sha.clone());
        }
        hashes
    };
    let mut index = index;
    for (part, hash) in index.parts.iter_mut().zip(hashes) {
        part.sha256 = hash;
    }
    write_final(paths, &index)?;
    remove_if_exists(&paths.state())?;
    remove_stale_parts(paths, plan.parts.len() as u32)?;
    report.export.exported = images;
    progress.finish();
    report.export.elapsed = progress.elapsed();
    Ok(report)
}

/// The part hashes when the same bundle is already complete on disk.
async fn complete_bundle(paths: &ArchivePaths, plan: &Plan) -> Option<Vec<String>> {
    let bytes = std::fs::read(paths.index()).ok()?;
    let old: ArchiveIndex = serde_json::from_slice(&bytes).ok()?;
    if old.bundle != plan.bundle || old.parts.len() != plan.parts.len() {
        return None;
    }
    // All parts at once: each is one thread's sequential read.
    let actual = futures::future::join_all(
        old.parts
            .iter()
            .map(|part| hash_file(paths.part(part.number))),
    )
    .await;
    let mut hashes = Vec::new();
    for (part, actual) in old.parts.iter().zip(actual) {
        let actual = actual.ok()?;
        if actual != part.sha256 {
            return None;
        }
        hashes.push(actual);
    }
    Some(hashes)
}

/// Parts an earlier, interrupted run of the same bundle finished.
async fn kept_parts(paths: &ArchivePaths, plan: &Plan) -> State {
    let mut state = State {
        bundle: plan.bundle.clone(),
        complete: BTreeMap::new(),
    };
    let Some(old) = std::fs::read(paths.state())
        .ok()
        .and_then(|b| serde_json::from_slice::<State>(&b).ok())
    else {
        return state;
    };
    if old.bundle != plan.bundle {
        return state;
    }
    for (number, sha) in old.complete {
        let ok = plan.parts.get(number as usize - 1).is_some()
            && hash_file(paths.part(number)).await.is_ok_and(|h| h == sha);
        if ok {
            state.complete.insert(number, sha);
        }
    }
    state
}

/// Creates every unfinished part at its final size with all headers,
/// identity and inline content written; complete parts are left alone.
fn open_parts(
    paths: &ArchivePaths,
    plan: &Plan,
    state: &State,
) -> Result<Vec<Option<std::fs::File>>, ArchiveError> {
    let mut files = Vec::new();
    for part in &plan.parts {
        if state.complete.contains_key(&part.number) {
            files.push(None);
            continue;
        }
        let path = paths.part(part.number);
        let file = std::fs::File::create(&path).map_err(io_err(&path))?;
        file.set_len(part.size).map_err(io_err(&path))?;
        for m in &part.members {
            let h = header(&m.path, m.size, plan.mtime)?;
            file.write_all_at(&h, m.header_offset)
                .map_err(io_err(&path))?;
            let inline = match &m.content {
                Content::Identity => Some(Bytes::from(plan.identity(part.number))),
                Content::Inline(b) => Some(b.clone()),
                Content::Blob { .. } => None,
            };
            if let Some(bytes) = inline {
                file.write_all_at(&bytes, m.header_offset + BLOCK)
                    .map_err(io_err(&path))?;
            }
        }
        files.push(Some(file));
    }
    Ok(files)
}

/// A blob's size once it is in, or why its bytes must be fetched again.
type Fetched = Result<u64, String>;

/// Downloads one blob into its pieces; returns its size, or why its bytes
/// must be fetched again (the part's hasher checks what it has seen of
/// them).
async fn fetch_into_parts(
    client: &Client,
    scratch: &Layout,
    source: &ImageRef,
    entry: &super::BlobEntry,
    files: &Arc<Vec<Option<std::fs::File>>>,
    hashers: &Hashers,
    advance: &(dyn Fn(u64) + Sync),
) -> Result<Fetched, ArchiveError> {
    // A blob whole in one part is checked by the part's hasher, which
    // reads it back (from the page cache) as it is written: one pass
    // hashes both. A blob in pieces over several parts is checked as it
    // arrives, and its pieces are hashed once it verified; so is an empty
    // blob, which has no bytes for the part's hasher to see.
    let whole_in_one_part = entry.pieces.len() == 1 && entry.size > 0;
    let mut writer = PieceWriter::new(entry, files);
    if whole_in_one_part {
        writer.notify = Some((hashers.clone(), entry.pieces[0]));
    }
    if scratch.has_blob(&entry.digest, entry.size) {
        // Already fetched (a config read to check a platform, a converted
        // schema1 layer): copy it over, checked again on the way (by the
        // part's hasher, for a blob whole in one part).
        let path = scratch.blob_path(&entry.digest);
        let mut file = tokio::fs::File::open(&path).await.map_err(io_err(&path))?;
        let mut verifier = if whole_in_one_part {
            Verifier::size_only(&entry.digest, entry.size)
        } else {
            Verifier::new(&entry.digest, Some(entry.size))
        };
        loop {
            let mut buf = vec![0u8; WRITE_BUFFER];
            let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf)
                .await
                .map_err(io_err(&path))?;
            if n == 0 {
                break;
            }
            verifier
                .update(&buf[..n])
                .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
            buf.truncate(n);
            writer.push(Bytes::from(buf)).await?;
        }
        verifier
            .finish()
            .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
        writer.flush().await?;
        writer.settle().await?;
        if !whole_in_one_part {
            hashers.pieces_in(entry);
        }
        return Ok(Ok(entry.size));
    }

    if whole_in_one_part {
        let mut reader = client.blob_reader_size_only(source, &entry.digest, entry.size);
        loop {
            match reader.next_chunk().await {
                Ok(Some(chunk)) => {
                    advance(chunk.len() as u64);
                    writer.push(chunk).await?;
                }
                Ok(None) => break,
                Err(e) if e.is_corrupt() => return Ok(Err(e.to_string())),
                Err(e) => return Err(e.into()),
            }
        }
        writer.flush().await?;
        writer.settle().await?;
        return Ok(Ok(entry.size));
    }

    // A corrupted transfer starts over and overwrites the same offsets;
    // the part's hasher has not looked at them yet.
    client
        .retry_corrupt(&entry.digest, || async {
            let mut writer = PieceWriter::new(entry, files);
            let mut reader = client.blob_reader(source, &entry.digest, entry.size);
            while let Some(chunk) = reader.next_chunk().await? {
                advance(chunk.len() as u64);
                writer.push(chunk).await?;
            }
            writer.flush().await?;
            writer.settle().await?;
            Ok::<(), ArchiveError>(())
        })
        .await?;
    hashers.pieces_in(entry);
    Ok(Ok(entry.size))
}

/// Writes a blob's bytes, in order, into its pieces in the part files.
///
/// Chunks are kept as they arrived until a batch is worth a trip to a
/// blocking thread, and written from there by positional writes: no copy
/// through user space.
struct PieceWriter {
    entry: super::BlobEntry,
    files: Arc<Vec<Option<std::fs::File>>>,
    batch: Vec<Bytes>,
    batched: usize,
    /// Blob offset of the batch's first byte.
    offset: u64,
    /// Tells the part's hasher how far a blob whole in one part is written.
    notify: Option<(Hashers, super::Piece)>,
}

impl PieceWriter {
    fn new(entry: &super::BlobEntry, files: &Arc<Vec<Option<std::fs::File>>>) -> PieceWriter {
        PieceWriter {
            entry: entry.clone(),
            files: files.clone(),
            batch: Vec::new(),
            batched: 0,
            offset: 0,
            notify: None,
        }
    }

    /// Runs blocking file work on the blob's pieces off the async threads,
    /// naming the blob when it fails.
    async fn on_files<F>(&self, work: F) -> Result<(), ArchiveError>
    where
        F: FnOnce(Vec<super::Piece>, &[Option<std::fs::File>]) -> std::io::Result<()>
            + Send
            + 'static,
    {
        let pieces = self.entry.pieces.clone();
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || work(pieces, &files))
            .await
            .map_err(|e| ArchiveError::Invalid(format!("file task failed: {e}")))?
            .map_err(|source| ArchiveError::Io {
                path: PathBuf::from(format!("part of blob {}", self.entry.digest)),
                source,
            })
    }

    /// Waits until the blob's bytes are on disk, as a layout does for each
    /// blob: spread over the run, this leaves little for the sync before
    /// the index.
    async fn settle(&self) -> Result<(), ArchiveError> {
        self.on_files(|pieces, files| {
            for p in pieces {
                if let Some(file) = &files[p.part as usize - 1] {
                    crate::layout::settle_range(file, p.offset, p.length)?;
                    file.sync_data()?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn push(&mut self, chunk: Bytes) -> Result<(), ArchiveError> {
        self.batched += chunk.len();
        self.batch.push(chunk);
        if self.batched >= WRITE_BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ArchiveError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let start = self.offset;
        self.offset += std::mem::take(&mut self.batched) as u64;
        self.on_files(move |pieces, files| {
            let mut at = start;
            for chunk in &batch {
                for (file, part_offset, from, len) in in_pieces(&pieces, files, at, chunk.len()) {
                    file.write_all_at(&chunk[from..from + len], part_offset)?;
                }
                at += chunk.len() as u64;
            }
            // Start writeback of the whole batch.
            for (file, part_offset, _, len) in
                in_pieces(&pieces, files, start, (at - start) as usize)
            {
                crate::layout::write_behind(file, part_offset, len as u64);
            }
            Ok(())
        })
        .await?;
        if let Some((hashers, piece)) = &self.notify {
            hashers.send(
                piece.part,
                Event::Written {
                    offset: piece.offset,
                    written: self.offset,
                },
            );
        }
        Ok(())
    }
}

/// Where `len` bytes at blob offset `start` go: for each piece they touch
/// in a part this run writes, the file, the offset in it, and the range of
/// the bytes (from, len) that lands there.
fn in_pieces<'f>(
    pieces: &[super::Piece],
    files: &'f [Option<std::fs::File>],
    start: u64,
    len: usize,
) -> Vec<(&'f std::fs::File, u64, usize, usize)> {
    let end = start + len as u64;
    let mut out = Vec::new();
    let mut blob_pos = 0u64;
    for piece in pieces {
        let (lo, hi) = (blob_pos, blob_pos + piece.length);
        blob_pos = hi;
        if hi <= start || lo >= end {
            continue;
        }
        if let Some(file) = &files[piece.part as usize - 1] {
            let from = start.max(lo);
            let to = end.min(hi);
            out.push((
                file,
                piece.offset + (from - lo),
                (from - start) as usize,
                (to - from) as usize,
            ));
        }
    }
    out
}

/// The part hashers of a run, and the tasks that feed them.
#[derive(Clone)]
struct Hashers {
    paths: ArchivePaths,
    state: Arc<Mutex<State>>,
    /// By part number - 1; None for parts kept from an earlier run.
    parts: Arc<Vec<Option<PartSlot>>>,
    /// Hash tasks still running, and what the finished ones reported
    /// beyond "nothing wrong" (finished tasks are let go as new ones come,
    /// so the list does not grow with the bundle).
    tasks: Arc<Mutex<Vec<HashTask>>>,
    reports: Arc<Mutex<Vec<HashOutcome>>>,
}

type HashOutcome = Result<Result<Corrupt, ArchiveError>, tokio::task::JoinError>;
type HashTask = tokio::task::JoinHandle<Result<Corrupt, ArchiveError>>;

/// One part's hash, and the news it has yet to take in.
struct PartSlot {
    events: Mutex<Vec<Event>>,
    hash: Mutex<PartHash>,
}

/// What a part's hasher learns.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// Nothing new: hash what is final already (headers, metadata).
    Start,
    /// The blob region at data `offset` holds this many bytes, from its
    /// start.
    Written { offset: u64, written: u64 },
}

/// Blobs whose bytes did not match their digest, and why.
type Corrupt = Vec<(Digest, String)>;

impl Hashers {
    /// Passes `event` to part `number`'s hasher, which hashes on from a
    /// blocking thread. Whoever holds the hash takes in every event queued
    /// meanwhile, so no thread waits for another.
    fn send(&self, number: u32, event: Event) {
        if self
            .parts
            .get(number as usize - 1)
            .is_none_or(Option::is_none)
        {
            return;
        }
        let this = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let slot = this.parts[number as usize - 1]
                .as_ref()
                .expect("checked above");
            slot.events.lock().expect("events lock").push(event);
            let mut corrupt = Vec::new();
            loop {
                let Ok(mut part) = slot.hash.try_lock() else {
                    break; // its holder looks at the queue once it is done
                };
                let events = std::mem::take(&mut *slot.events.lock().expect("events lock"));
                let path = part.path.clone();
                let (sha, bad) = part.take_in(&events).map_err(io_err(&path))?;
                corrupt.extend(bad);
                tracing::trace!(
                    "part {} hashed to byte {} of {}",
                    part_label(number),
                    part.done,
                    part.size
                );
                if let Some(sha) = sha {
                    let mut s = this.state.lock().expect("state lock");
                    s.complete.insert(number, sha);
                    save_state(&this.paths, &s)?;
                    tracing::debug!("part {} complete", part_label(number));
                }
                drop(part);
                if slot.events.lock().expect("events lock").is_empty() {
                    break;
                }
            }
            Ok(corrupt)
        });
        let mut tasks = self.tasks.lock().expect("tasks lock");
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut *tasks)
            .into_iter()
            .partition(|t| t.is_finished());
        *tasks = running;
        tasks.push(task);
        drop(tasks);
        let mut reports = self.reports.lock().expect("reports lock");
        for t in done {
            match futures::FutureExt::now_or_never(t).expect("the task is finished") {
                Ok(Ok(corrupt)) if corrupt.is_empty() => {}
                other => reports.push(other),
            }
        }
    }

    /// A blob in pieces over several parts verified: its pieces are in.
    fn pieces_in(&self, entry: &super::BlobEntry) {
        for piece in &entry.pieces {
            self.send(
                piece.part,
                Event::Written {
                    offset: piece.offset,
                    written: piece.length,
                },
            );
        }
    }

    /// Waits for every hash task sent so far; returns the blobs that failed
    /// their check.
    async fn join(&self) -> Result<Corrupt, ArchiveError> {
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        let mut outcomes = futures::future::join_all(tasks).await;
        outcomes.append(&mut self.reports.lock().expect("reports lock"));
        let mut corrupt = Vec::new();
        for r in outcomes {
            let bad = r.map_err(|e| ArchiveError::Invalid(format!("hash task failed: {e}")))??;
            corrupt.extend(bad);
        }
        Ok(corrupt)
    }

    /// Rewinds the blob region at `offset` of part `number` to be written
    /// and checked anew; false if its bytes already passed their check.
    /// Only between rounds, when no task runs.
    fn rewind(&self, number: u32, offset: u64) -> bool {
        match &self.parts[number as usize - 1] {
            Some(slot) => slot.hash.lock().expect("part hash lock").rewind(offset),
            None => false,
        }
    }
}

/// A part's sha256, computed front to back as its bytes are written:
/// everything but blob data is in place when the part is created; a blob's
/// data is hashed as far as it is written (a blob whole in this part, whose
/// digest is checked in the same pass), or once it verified (a piece of a
/// blob over several parts).
struct PartHash {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    hasher: Sha256,
    /// Bytes hashed so far, from the start; u64::MAX once finished.
    done: u64,
    /// Blob regions not yet hashed to their end, by data offset.
    regions: BTreeMap<u64, Region>,
    buf: Vec<u8>,
}

/// How much of a part is read back at a time to be hashed.
const READ_BUFFER: usize = 1 << 20;

struct Region {
    len: u64,
    /// Bytes written from the region's start.
    written: u64,
    /// The blob's check, for a blob whole in this part.
    check: Option<Verifier>,
    /// The part's hash just before the region, to rewind to.
    before: Option<Sha256>,
}

impl PartHash {
    fn new(part: &super::plan::PartPlan, plan: &Plan, path: PathBuf) -> PartHash {
        let mut regions = BTreeMap::new();
        for m in &part.members {
            if let Content::Blob {
                digest,
                blob_offset,
            } = &m.content
                // An empty blob has no bytes to wait for.
                && m.size > 0
            {
                let whole = *blob_offset == 0
                    && plan
                        .blobs
                        .iter()
                        .any(|b| &b.digest == digest && b.pieces.len() == 1);
                regions.insert(
                    m.data_offset(),
                    Region {
                        len: m.size,
                        written: 0,
                        check: whole.then(|| Verifier::new(digest, Some(m.size))),
                        before: None,
                    },
                );
            }
        }
        PartHash {
            path,
            file: None,
            size: part.size,
            hasher: Sha256::new(),
            done: 0,
            regions,
            buf: Vec::new(),
        }
    }

    /// Takes in `events` and hashes on as far as the bytes are final.
    /// Returns the part's sha256 once all of it is hashed, and the blobs
    /// that failed their check: the hash stops before such a blob, whose
    /// region waits to be written anew.
    fn take_in(&mut self, events: &[Event]) -> std::io::Result<(Option<String>, Corrupt)> {
        if self.done == u64::MAX {
            return Ok((None, Vec::new()));
        }
        for event in events {
            if let Event::Written { offset, written } = *event
                && let Some(r) = self.regions.get_mut(&offset)
            {
                r.written = r.written.max(written.min(r.len));
            }
        }
        let mut corrupt = Vec::new();
        while self.done < self.size {
            let inside = self
                .regions
                .range(..=self.done)
                .next_back()
                .filter(|(o, r)| self.done < **o + r.len)
                .map(|(o, _)| *o);
            let Some(start) = inside else {
                // Plain bytes up to the next blob region.
                let next = self
                    .regions
                    .range(self.done..)
                    .next()
                    .map_or(self.size, |(o, _)| *o);
                // Without a check there is nothing to fail.
                let _unchecked = self.hash_to(next, None)?;
                continue;
            };
            let region = self.regions.get_mut(&start).expect("found above");
            let end = start + region.written;
            if end <= self.done {
                break; // waiting for its bytes
            }
            if self.done == start && region.check.is_some() {
                region.before = Some(self.hasher.clone());
            }
            let mut check = region.check.take();
            let fed = self.hash_to(end, check.as_mut());
            let region = self.regions.get_mut(&start).expect("found above");
            region.check = check;
            let fed = fed?;
            let whole = region.written == region.len;
            if fed.is_ok() && !whole {
                break;
            }
            let region = self.regions.remove(&start).expect("found above");
            let Some(check) = region.check else {
                continue;
            };
            let digest = check.expected().clone();
            if let Err(e) = fed.and_then(|()| check.finish().map(|_| ())) {
                // Back to just before the blob; it is fetched again.
                self.hasher = region.before.expect("set when the region began");
                self.done = start;
                self.regions.insert(
                    start,
                    Region {
                        len: region.len,
                        written: 0,
                        check: Some(Verifier::new(&digest, Some(region.len))),
                        before: None,
                    },
                );
                corrupt.push((digest, e.to_string()));
                break;
            }
        }
        if self.done == self.size && self.regions.is_empty() {
            let h = std::mem::take(&mut self.hasher);
            self.done = u64::MAX;
            self.file = None;
            self.buf = Vec::new();
            return Ok((Some(hex::encode(h.finalize())), corrupt));
        }
        Ok((None, corrupt))
    }

    /// Hashes the part from `done` to `end`, feeding `check` too.
    fn hash_to(
        &mut self,
        end: u64,
        mut check: Option<&mut Verifier>,
    ) -> std::io::Result<Result<(), crate::digest::VerifyError>> {
        use std::io::{Read, Seek};
        if self.file.is_none() {
            self.file = Some(std::fs::File::open(&self.path)?);
        }
        let file = self.file.as_mut().expect("opened above");
        file.seek(std::io::SeekFrom::Start(self.done))?;
        // One buffer for the part's whole life: a fresh one per call would
        // be zeroed (or faulted in) again each time.
        if self.buf.is_empty() {
            self.buf = vec![0u8; READ_BUFFER];
        }
        let buf = &mut self.buf;
        let mut outcome = Ok(());
        while self.done < end {
            let n = (buf.len() as u64).min(end - self.done) as usize;
            file.read_exact(&mut buf[..n])?;
            match check.as_deref_mut() {
                Some(c) if outcome.is_ok() => {
                    outcome = c.update_along(&mut self.hasher, &buf[..n]);
                }
                _ => self.hasher.update(&buf[..n]),
            }
            self.done += n as u64;
        }
        Ok(outcome)
    }

    /// See [`Hashers::rewind`].
    fn rewind(&mut self, offset: u64) -> bool {
        let Some(region) = self.regions.get_mut(&offset) else {
            return false; // hashed and checked whole already
        };
        if self.done != u64::MAX && self.done > offset {
            self.hasher = region.before.take().expect("set when the region began");
            self.done = offset;
        }
        region.written = 0;
        if let Some(c) = &region.check {
            region.check = Some(Verifier::new(c.expected(), c.expected_size()));
        }
        true
    }
}

/// Flushes every part this run wrote to the disk, several at a time.
async fn sync_parts(
    paths: &ArchivePaths,
    files: &Arc<Vec<Option<std::fs::File>>>,
) -> Result<(), ArchiveError> {
    let tasks: Vec<_> = (0..files.len())
        .filter(|i| files[*i].is_some())
        .map(|i| {
            let files = files.clone();
            let task = tokio::task::spawn_blocking(move || {
                files[i].as_ref().expect("filtered").sync_data()
            });
            (i, task)
        })
        .collect();
    for (i, task) in tasks {
        let path = paths.part(i as u32 + 1);
        task.await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(io_err(&path))?;
    }
    Ok(())
}

/// A file's sha256, reading it once.
async fn hash_file(path: PathBuf) -> std::io::Result<String> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Records the resume state. Not synced: a re-run checks every part it
/// names against its hash anyway, and on ext4 an fsync here would wait for
/// all the part data written so far.
fn save_state(paths: &ArchivePaths, state: &State) -> Result<(), ArchiveError> {
    let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
    write_atomic(&paths.state(), &bytes, false)
}

/// Writes the index and the `sha256sum -c` file, atomically.
fn write_final(paths: &ArchivePaths, index: &ArchiveIndex) -> Result<(), ArchiveError> {
    let index_bytes = index.to_bytes();
    let mut sums = String::new();
    for part in &index.parts {
        sums.push_str(&format!("{}  {}\n", part.sha256, part.name));
    }
    sums.push_str(&format!(
        "{}  {}.index.json\n",
        hex::encode(Sha256::digest(&index_bytes)),
        paths.name()
    ));
    write_atomic(&paths.index(), &index_bytes, true)?;
    write_atomic(&paths.checksums(), sums.as_bytes(), true)
}

fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<(), ArchiveError> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    temp.write_all(bytes).map_err(io_err(path))?;
    if durable {
        temp.as_file().sync_all().map_err(io_err(path))?;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(io_err(path))?;
    }
    temp.persist(path).map_err(|e| ArchiveError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Removes parts numbered past the end, left by an earlier, larger bundle.
fn remove_stale_parts(paths: &ArchivePaths, count: u32) -> Result<(), ArchiveError> {
    let mut n = count + 1;
    while paths.part(n).exists() {
        remove_if_exists(&paths.part(n))?;
        n += 1;
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), ArchiveError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ArchiveError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Member mtimes: `SOURCE_DATE_EPOCH` when set, else 0, so that parts are
/// reproducible by default.
fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}
