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
use sha2::{Digest as _, Sha256};

use super::contents::{archive_index, base_info, contents};
use super::plan::{BLOCK, Content, Plan, header, plan};
use super::{ArchiveError, ArchiveIndex, ArchivePaths, part_label};
use crate::convert::convert_pending;
use crate::digest::Digest;
use crate::export::{ExportOptions, ExportReport, resolve_all};
use crate::layout::Layout;
use crate::progress::{Progress, human_bytes, rate};
use crate::reference::ImageRef;
use crate::registry::Client;

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
    // Each unfinished part is hashed front to back as its bytes become
    // final, so its sha256 is ready soon after its last blob lands.
    let hashers: Arc<Vec<Option<Mutex<PartHash>>>> = Arc::new(
        plan.parts
            .iter()
            .map(|p| {
                files[p.number as usize - 1]
                    .is_some()
                    .then(|| Mutex::new(PartHash::new(p, paths.part(p.number))))
            })
            .collect(),
    );
    let mut hashing = Vec::new();
    for part in &plan.parts {
        if hashers[part.number as usize - 1].is_some() {
            hashing.push(advance_part(
                paths.clone(),
                hashers.clone(),
                part.number,
                None,
                state.clone(),
            ));
        }
    }

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
    let results: Vec<(Digest, Result<u64, String>)> = futures::stream::iter(wanted)
        .map(|(entry, i)| {
            let client = client.clone();
            let source = images[i].reference.clone();
            let scratch = scratch.clone();
            let files = files.clone();
            let progress = progress.clone();
            let bar = bars[i].clone();
            async move {
                let digest = entry.digest.clone();
                let outcome = crate::on_task(async move {
                    fetch_into_parts(&client, &scratch, &source, &entry, &files, &|n| {
                        progress.advance(&bar, n)
                    })
                    .await
                })
                .await;
                (digest, outcome)
            }
        })
        .buffer_unordered(jobs)
        .then(|(digest, outcome)| {
            // The blob's bytes are final: hash its parts on from there.
            if outcome.is_ok()
                && let Some(entry) = plan.blobs.iter().find(|b| b.digest == digest)
            {
                for piece in &entry.pieces {
                    if hashers[piece.part as usize - 1].is_some() {
                        hashing.push(advance_part(
                            paths.clone(),
                            hashers.clone(),
                            piece.part,
                            Some(piece.offset),
                            state.clone(),
                        ));
                    }
                }
            }
            futures::future::ready((digest, outcome))
        })
        .collect()
        .await;
    for bar in &bars {
        bar.finish_and_clear();
    }
    for r in futures::future::join_all(hashing).await {
        r.map_err(|e| ArchiveError::Invalid(format!("hash task failed: {e}")))??;
    }
    // Every part this run wrote reaches the disk before the index that
    // describes it is written.
    sync_parts(&files).await?;

    let mut failures = HashMap::new();
    for (digest, outcome) in results {
        match outcome {
            Ok(size) => {
                report.export.blobs_fetched += 1;
                report.export.bytes_fetched += size;
            }
            Err(e) => {
                failures.insert(digest, e);
            }
        }
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
        plan.parts
            .iter()
            .map(|p| state.complete.get(&p.number).cloned().unwrap_or_default())
            .collect()
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
    let mut hashes = Vec::new();
    for part in &old.parts {
        let actual = hash_file(paths.part(part.number)).await.ok()?;
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

/// Downloads one blob into its pieces; returns its size.
async fn fetch_into_parts(
    client: &Client,
    scratch: &Layout,
    source: &ImageRef,
    entry: &super::BlobEntry,
    files: &Arc<Vec<Option<std::fs::File>>>,
    advance: &(dyn Fn(u64) + Sync),
) -> Result<u64, ArchiveError> {
    if scratch.has_blob(&entry.digest, entry.size) {
        // Already fetched (a config read to check a platform, a converted
        // schema1 layer): copy it over, verified again on the way.
        let mut writer = PieceWriter::new(entry, files);
        let path = scratch.blob_path(&entry.digest);
        let mut file = tokio::fs::File::open(&path).await.map_err(io_err(&path))?;
        let mut verifier = crate::digest::Verifier::new(&entry.digest, Some(entry.size));
        let mut buf = vec![0u8; WRITE_BUFFER];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf)
                .await
                .map_err(io_err(&path))?;
            if n == 0 {
                break;
            }
            verifier
                .update(&buf[..n])
                .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
            writer.push(&buf[..n]).await?;
        }
        verifier
            .finish()
            .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
        writer.flush().await?;
        writer.settle().await?;
        return Ok(entry.size);
    }

    // The reader verifies digest and size before it reports the end; the
    // part is hashed and recorded only after every blob in it did. A
    // corrupted transfer starts over and overwrites the same offsets.
    client
        .retry_corrupt(&entry.digest, || async {
            let mut writer = PieceWriter::new(entry, files);
            let mut reader = client.blob_reader(source, &entry.digest, entry.size);
            while let Some(chunk) = reader.next_chunk().await? {
                writer.push(&chunk).await?;
                advance(chunk.len() as u64);
            }
            writer.flush().await?;
            writer.settle().await?;
            Ok(entry.size)
        })
        .await
}

/// Writes a blob's bytes, in order, into its pieces in the part files.
struct PieceWriter {
    entry: super::BlobEntry,
    files: Arc<Vec<Option<std::fs::File>>>,
    buffer: Vec<u8>,
    /// Blob offset of `buffer[0]`.
    offset: u64,
}

impl PieceWriter {
    fn new(entry: &super::BlobEntry, files: &Arc<Vec<Option<std::fs::File>>>) -> PieceWriter {
        PieceWriter {
            entry: entry.clone(),
            files: files.clone(),
            buffer: Vec::with_capacity(WRITE_BUFFER),
            offset: 0,
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

    async fn push(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= WRITE_BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ArchiveError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let buffer = std::mem::replace(&mut self.buffer, Vec::with_capacity(WRITE_BUFFER));
        let start = self.offset;
        self.offset += buffer.len() as u64;
        self.on_files(move |pieces, files| {
            let mut blob_pos = 0u64;
            for piece in pieces {
                let (lo, hi) = (blob_pos, blob_pos + piece.length);
                blob_pos = hi;
                let end = start + buffer.len() as u64;
                if hi <= start || lo >= end {
                    continue;
                }
                let Some(file) = &files[piece.part as usize - 1] else {
                    continue;
                };
                let from = start.max(lo);
                let to = end.min(hi);
                let slice = &buffer[(from - start) as usize..(to - start) as usize];
                let at = piece.offset + (from - lo);
                file.write_all_at(slice, at)?;
                crate::layout::write_behind(file, at, slice.len() as u64);
            }
            Ok(())
        })
        .await
    }
}

/// A part's sha256, computed front to back as far as its bytes are final:
/// everything but blob data is written when the part is created; blob data
/// is final once its blob verified.
struct PartHash {
    path: PathBuf,
    size: u64,
    hasher: Sha256,
    /// Bytes hashed so far, from the start.
    done: u64,
    /// Data offsets of blob pieces not yet final, with their lengths.
    pending: BTreeMap<u64, u64>,
}

impl PartHash {
    fn new(part: &super::plan::PartPlan, path: PathBuf) -> PartHash {
        let pending = part
            .members
            .iter()
            .filter(|m| matches!(m.content, Content::Blob { .. }))
            .map(|m| (m.data_offset(), m.size))
            .collect();
        PartHash {
            path,
            size: part.size,
            hasher: Sha256::new(),
            done: 0,
            pending,
        }
    }

    /// Marks the piece at `offset` final and hashes on as far as the bytes
    /// are; returns the part's sha256 once all of it is hashed.
    fn complete(&mut self, offset: Option<u64>) -> std::io::Result<Option<String>> {
        if let Some(o) = offset {
            self.pending.remove(&o);
        }
        let limit = self.pending.keys().next().copied().unwrap_or(self.size);
        if limit > self.done {
            use std::io::{Read, Seek};
            let mut file = std::fs::File::open(&self.path)?;
            file.seek(std::io::SeekFrom::Start(self.done))?;
            let mut left = limit - self.done;
            let mut buf = vec![0u8; (4 << 20).min(left as usize)];
            while left > 0 {
                let n = (buf.len() as u64).min(left) as usize;
                file.read_exact(&mut buf[..n])?;
                self.hasher.update(&buf[..n]);
                left -= n as u64;
            }
            self.done = limit;
        }
        if self.done == self.size && self.pending.is_empty() {
            let h = std::mem::take(&mut self.hasher);
            self.done = u64::MAX;
            return Ok(Some(hex::encode(h.finalize())));
        }
        Ok(None)
    }
}

/// Hashes part `number` on (after the piece at `offset` became final) and
/// records the part in the state once it is complete.
fn advance_part(
    paths: ArchivePaths,
    hashers: Arc<Vec<Option<Mutex<PartHash>>>>,
    number: u32,
    offset: Option<u64>,
    state: Arc<Mutex<State>>,
) -> tokio::task::JoinHandle<Result<(), ArchiveError>> {
    tokio::task::spawn_blocking(move || {
        let slot = hashers[number as usize - 1]
            .as_ref()
            .expect("only unfinished parts");
        let mut part = slot.lock().expect("part hash lock");
        if part.done == u64::MAX {
            return Ok(());
        }
        let path = part.path.clone();
        let done = part.complete(offset).map_err(io_err(&path))?;
        tracing::trace!(
            "part {} hashed to byte {} of {}",
            part_label(number),
            part.done,
            part.size
        );
        if let Some(sha) = done {
            let mut s = state.lock().expect("state lock");
            s.complete.insert(number, sha);
            save_state(&paths, &s)?;
            tracing::debug!("part {} complete", part_label(number));
        }
        Ok(())
    })
}

/// Flushes every part this run wrote to the disk, several at a time.
async fn sync_parts(files: &Arc<Vec<Option<std::fs::File>>>) -> Result<(), ArchiveError> {
    let tasks: Vec<_> = (0..files.len())
        .filter(|i| files[*i].is_some())
        .map(|i| {
            let files = files.clone();
            tokio::task::spawn_blocking(move || files[i].as_ref().expect("filtered").sync_data())
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        t.map_err(|e| ArchiveError::Invalid(format!("sync task failed: {e}")))?
            .map_err(|source| ArchiveError::Io {
                path: PathBuf::from("archive part"),
                source,
            })?;
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
