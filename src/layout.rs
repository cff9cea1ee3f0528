//! The OCI image layout on disk: `oci-layout`, `index.json`, `blobs/`.
//!
//! Invariant: every file under `blobs/` was hashed while it was written and
//! matches its name; it got there by a rename from `.airlock/tmp/` after its
//! digest and size checked out. `index.json` is replaced by a rename, last,
//! so an interrupted run leaves the previous, valid layout.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, VerifyError, verify_bytes};
use crate::manifest::{Descriptor, OCI_INDEX};

/// The only `imageLayoutVersion` of the image spec.
pub const LAYOUT_VERSION: &str = "1.0.0";
/// Annotation naming an image inside a layout (image-spec).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full image name containerd reads before `REF_NAME`.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Where airlock keeps work in progress inside a layout; readers ignore it.
const WORK_DIR: &str = ".airlock";

/// A layout that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an OCI image layout: {reason}")]
    NotLayout { path: PathBuf, reason: String },
    #[error("{path}: malformed {what}: {reason}")]
    Malformed {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("blob {digest} is missing from the layout ({path})")]
    MissingBlob { digest: Digest, path: PathBuf },
    #[error("blob file {path}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: VerifyError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `index.json`: the layout's entry points.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: None,
        }
    }
}

impl Index {
    /// Adds an entry, replacing the one with the same ref name in place.
    pub fn upsert(&mut self, entry: Descriptor) {
        let name = ref_name(&entry).map(str::to_string);
        match self
            .manifests
            .iter_mut()
            .find(|e| name.is_some() && ref_name(e) == name.as_deref())
        {
            Some(existing) => *existing = entry,
            None => self.manifests.push(entry),
        }
    }

    /// Serialises with a stable key order and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("index always serialises");
        out.push(b'\n');
        out
    }
}

/// The name an `index.json` entry carries, if any.
pub fn ref_name(entry: &Descriptor) -> Option<&str> {
    entry
        .annotations
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Opens a layout for writing, creating it when the directory is new or
    /// empty; refuses a non-empty directory that is not a layout.
    pub fn create(root: &Path) -> Result<Layout, LayoutError> {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let marker = root.join("oci-layout");
        if marker.exists() {
            let layout = Layout::open(root)?;
            layout.clean_work_dir()?;
            return Ok(layout);
        }
        let has_entries = std::fs::read_dir(root)
            .map_err(io_err(root))?
            .next()
            .is_some();
        if has_entries {
            return Err(LayoutError::NotLayout {
                path: root.to_path_buf(),
                reason: "the directory is not empty and has no oci-layout file; \
                         choose a new or empty directory"
                    .to_string(),
            });
        }
        let layout = Layout {
            root: root.to_path_buf(),
        };
        std::fs::create_dir_all(layout.root.join("blobs/sha256")).map_err(io_err(root))?;
        write_atomic(
            &layout.root,
            &marker,
            format!("{{\"imageLayoutVersion\":\"{LAYOUT_VERSION}\"}}").as_bytes(),
        )?;
        layout.write_index(&Index::default())?;
        Ok(layout)
    }

    /// Opens an existing layout, checking `oci-layout` and `index.json`.
    pub fn open(root: &Path) -> Result<Layout, LayoutError> {
        let marker = root.join("oci-layout");
        let text = std::fs::read(&marker).map_err(|e| LayoutError::NotLayout {
            path: root.to_path_buf(),
            reason: format!("cannot read oci-layout: {e}"),
        })?;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Marker {
            image_layout_version: String,
        }
        let parsed: Marker = serde_json::from_slice(&text).map_err(|e| LayoutError::Malformed {
            path: marker.clone(),
            what: "oci-layout",
            reason: e.to_string(),
        })?;
        if parsed.image_layout_version != LAYOUT_VERSION {
            return Err(LayoutError::Malformed {
                path: marker,
                what: "oci-layout",
                reason: format!(
                    "imageLayoutVersion {:?} is not {LAYOUT_VERSION:?}",
                    parsed.image_layout_version
                ),
            });
        }
        let layout = Layout {
            root: root.to_path_buf(),
        };
        layout.read_index()?;
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of a blob; safe because a [`Digest`] is validated hex.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// Whether the blob is present with the right size. Presence is enough:
    /// nothing lands under `blobs/` unverified.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    pub fn read_index(&self) -> Result<Index, LayoutError> {
        let path = self.root.join("index.json");
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| LayoutError::Malformed {
            path: path.clone(),
            what: "index.json",
            reason: e.to_string(),
        })?;
        if index.schema_version != 2 {
            return Err(LayoutError::Malformed {
                path,
                what: "index.json",
                reason: format!("schemaVersion {} is not 2", index.schema_version),
            });
        }
        Ok(index)
    }

    /// Replaces `index.json` atomically, after making every blob durable.
    pub fn write_index(&self, index: &Index) -> Result<(), LayoutError> {
        let blobs = self.root.join("blobs/sha256");
        if blobs.exists() {
            sync_dir(&blobs)?;
        }
        write_atomic(&self.root, &self.root.join("index.json"), &index.to_bytes())
    }

    /// Writes a file of airlock's own at the layout's top, atomically.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), LayoutError> {
        write_atomic(&self.root, &self.root.join(name), bytes)
    }

    /// Reads a small blob (manifest, config) whole and verifies it.
    pub fn read_small_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<Bytes, LayoutError> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LayoutError::MissingBlob {
                digest: digest.clone(),
                path: path.clone(),
            },
            _ => LayoutError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        verify_bytes(digest, size, &bytes).map_err(|source| LayoutError::Corrupt {
            path: path.clone(),
            source,
        })?;
        Ok(Bytes::from(bytes))
    }

    /// Stores bytes already verified against `digest` (a manifest fetched by
    /// digest, say).
    pub fn write_small_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), LayoutError> {
        self.write_small_blobs(&[(digest, bytes)])
    }

    /// Stores several small blobs (the manifests of a run) at once: all are
    /// written, then synced together (their flushes coalesce, where one
    /// after another each waited for its own), then renamed into place.
    pub fn write_small_blobs(&self, blobs: &[(&Digest, &[u8])]) -> Result<(), LayoutError> {
        let mut wanted: Vec<(PathBuf, &[u8])> = Vec::new();
        for (digest, bytes) in blobs {
            let target = self.blob_path(digest);
            verify_bytes(digest, None, bytes).map_err(|source| LayoutError::Corrupt {
                path: target.clone(),
                source,
            })?;
            if !self.has_blob(digest, bytes.len() as u64)
                && !wanted.iter().any(|(t, _)| t == &target)
            {
                wanted.push((target, bytes));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let dir = self.work_dir()?;
        if let [(target, bytes)] = &wanted[..] {
            return write_atomic(&dir, target, bytes);
        }
        let mut temps = Vec::with_capacity(wanted.len());
        for (target, bytes) in wanted {
            let mut temp = tempfile::NamedTempFile::new_in(&dir).map_err(io_err(&dir))?;
            temp.write_all(bytes).map_err(io_err(&target))?;
            temps.push((temp, target));
        }
        // A few threads at a time; each sync is short.
        for group in temps.chunks(16) {
            std::thread::scope(|scope| {
                let syncs: Vec<_> = group
                    .iter()
                    .map(|(temp, _)| scope.spawn(|| temp.as_file().sync_all()))
                    .collect();
                group.iter().zip(syncs).try_for_each(|((_, target), sync)| {
                    sync.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("sync thread panicked")))
                        .map_err(io_err(target))
                })
            })?;
        }
        for (temp, target) in temps {
            set_readable(temp.path())?;
            temp.persist(&target).map_err(|e| LayoutError::Io {
                path: target.clone(),
                source: e.error,
            })?;
        }
        Ok(())
    }

    /// Starts writing a blob into the layout's work area.
    pub async fn begin_blob(&self, digest: &Digest) -> Result<TempBlob, LayoutError> {
        let dir = self.work_dir()?;
        let temp = tempfile::Builder::new()
            .prefix(&format!("{}-", &digest.hex()[..16]))
            .tempfile_in(&dir)
            .map_err(io_err(&dir))?;
        let (file, path) = temp.keep().map_err(|e| LayoutError::Io {
            path: dir.clone(),
            source: e.error,
        })?;
        Ok(TempBlob {
            file: Arc::new(file),
            pending: Vec::new(),
            pending_len: 0,
            in_flight: None,
            kick: None,
            path,
            target: self.blob_path(digest),
            committed: false,
            written: 0,
            kicked: 0,
        })
    }

    fn work_dir(&self) -> Result<PathBuf, LayoutError> {
        let dir = self.root.join(WORK_DIR).join("tmp");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    /// Removes what an interrupted run left half-written.
    fn clean_work_dir(&self) -> Result<(), LayoutError> {
        let dir = self.root.join(WORK_DIR);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LayoutError::Io {
                path: dir,
                source: e,
            }),
        }
    }

    /// Removes a layout this run created and found no use for: its own
    /// files, then the directory if nothing else is in it.
    pub fn remove(&self) {
        for dir in ["blobs", WORK_DIR] {
            let _ = std::fs::remove_dir_all(self.root.join(dir));
        }
        for file in ["oci-layout", "index.json"] {
            let _ = std::fs::remove_file(self.root.join(file));
        }
        let _ = std::fs::remove_dir(&self.root);
    }

    /// Removes the work area once a run is done with it.
    pub fn finish(&self) -> Result<(), LayoutError> {
        self.clean_work_dir()
    }
}

/// A blob being written; it reaches `blobs/` only through [`TempBlob::commit`].
///
/// Chunks are kept as they came (no copy) until a batch of them is worth a
/// system call; the batch is then written by one `writev` on a blocking
/// thread while the next one gathers, so the async threads never wait for
/// the page cache and a blob's bytes are copied only by the kernel.
pub struct TempBlob {
    file: Arc<std::fs::File>,
    pending: Vec<Bytes>,
    pending_len: usize,
    in_flight: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    kick: Option<tokio::task::JoinHandle<()>>,
    path: PathBuf,
    target: PathBuf,
    committed: bool,
    /// Bytes handed to the file so far, and how many of them writeback was
    /// asked for.
    written: u64,
    kicked: u64,
}

/// How much is gathered before it is written.
const BATCH: usize = 1 << 20;

/// How much is written before writeback of it is started.
const WRITE_BEHIND: u64 = 8 << 20;

impl TempBlob {
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), LayoutError> {
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        if self.pending_len >= BATCH {
            self.write_batch().await?;
        }
        Ok(())
    }

    /// Starts writing what has gathered, once the batch before it is done.
    async fn write_batch(&mut self) -> Result<(), LayoutError> {
        self.wait_for_batch().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        // Writeback of what earlier batches wrote is started on a task of
        // its own, one at a time: starting it can wait for the disk (block
        // allocation reading a bitmap behind another file's flush), and the
        // download must not wait with it.
        let kick_idle = self.kick.as_ref().is_none_or(|k| k.is_finished());
        if kick_idle && self.written - self.kicked >= WRITE_BEHIND {
            let (offset, len) = (self.kicked, self.written - self.kicked);
            self.kicked = self.written;
            let file = Arc::clone(&self.file);
            self.kick = Some(tokio::task::spawn_blocking(move || {
                write_behind(&*file, offset, len)
            }));
        }
        self.written += std::mem::take(&mut self.pending_len) as u64;
        let file = Arc::clone(&self.file);
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            write_all_vectored(&file, batch)
        }));
        Ok(())
    }

    async fn wait_for_batch(&mut self) -> Result<(), LayoutError> {
        if let Some(task) = self.in_flight.take() {
            task.await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(io_err(&self.path))?;
        }
        Ok(())
    }

    /// Writes out everything gathered (the sync that follows writes it back).
    async fn finish(&mut self) -> Result<(), LayoutError> {
        self.write_batch().await?;
        self.wait_for_batch().await
    }

    /// Writes out, syncs and renames the blob into place. Call only after
    /// the verifier accepted every byte written.
    pub async fn commit(mut self) -> Result<(), LayoutError> {
        self.finish().await?;
        // The data (and the size that finds it) must be on disk before the
        // name is: a rename after a crash must never name garbage.
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(io_err(&self.path))?;
        set_readable(&self.path)?;
        tokio::fs::rename(&self.path, &self.target)
            .await
            .map_err(io_err(&self.target))?;
        self.committed = true;
        Ok(())
    }
}

/// Writes every chunk, in order, at the file's position.
fn write_all_vectored(mut file: &std::fs::File, chunks: Vec<Bytes>) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> =
        chunks.iter().map(|c| std::io::IoSlice::new(c)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = file.write_vectored(rest)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `bytes` to a temporary file in `tmp_dir`, syncs it and renames it
/// over `target`.
fn write_atomic(tmp_dir: &Path, target: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let mut temp = tempfile::NamedTempFile::new_in(tmp_dir).map_err(io_err(tmp_dir))?;
    temp.write_all(bytes).map_err(io_err(target))?;
    temp.as_file().sync_all().map_err(io_err(target))?;
    set_readable(temp.path())?;
    temp.persist(target).map_err(|e| LayoutError::Io {
        path: target.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Starts writing a just-written range back to disk without waiting for
/// it, so that the fsync at the end of a blob or part finds little left to
/// do. Linux's `sync_file_range(2)` has no wrapper in std; failure only
/// means the final sync does all the work, so it is ignored.
pub fn write_behind(file: &impl std::os::fd::AsRawFd, offset: u64, len: u64) {
    // SAFETY: the descriptor is valid for the borrow; the call only hints
    // the kernel and touches no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Waits until a written range is on disk (its data; the file's metadata
/// is synced once, later). `sync_file_range(2)`, as in [`write_behind`].
pub fn settle_range(
    file: &impl std::os::fd::AsRawFd,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: as in `write_behind`.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Temporary files are created 0600; a bundle is for others to read too.
fn set_readable(path: &Path) -> Result<(), LayoutError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), LayoutError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_empty_non_layout_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert!(matches!(
            Layout::create(dir.path()),
            Err(LayoutError::NotLayout { .. })
        ));
    }

    #[test]
    fn rejects_wrong_layout_version() {
        let dir = tempfile::tempdir().unwrap();
        Layout::create(dir.path()).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"2.0.0"}"#,
        )
        .unwrap();
        let err = Layout::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("2.0.0"), "{err}");
    }

    #[tokio::test]
    async fn uncommitted_blob_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let d = Digest::sha256_of(b"abc");
        let mut t = layout.begin_blob(&d).await.unwrap();
        t.write(Bytes::from_static(b"ab")).await.unwrap();
        drop(t);
        assert!(!layout.has_blob(&d, 3));
        let leftovers = std::fs::read_dir(dir.path().join(".airlock/tmp"))
            .unwrap()
            .count();
        assert_eq!(leftovers, 0);
        let mut t = layout.begin_blob(&d).await.unwrap();
        t.write(Bytes::from_static(b"abc")).await.unwrap();
        t.commit().await.unwrap();
        assert!(layout.has_blob(&d, 3));
        assert_eq!(&layout.read_small_blob(&d, Some(3)).unwrap()[..], b"abc");
    }

    #[test]
    fn small_blobs_written_together_land_once_each_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let bodies: Vec<Vec<u8>> = (0..20)
            .map(|i| format!("manifest {i}").into_bytes())
            .collect();
        let digests: Vec<Digest> = bodies.iter().map(|b| Digest::sha256_of(b)).collect();
        // One present already, one named twice, and more than one group of
        // syncs.
        layout.write_small_blob(&digests[3], &bodies[3]).unwrap();
        let mut batch: Vec<(&Digest, &[u8])> = digests
            .iter()
            .zip(&bodies)
            .map(|(d, b)| (d, &b[..]))
            .collect();
        batch.push((&digests[5], &bodies[5]));
        layout.write_small_blobs(&batch).unwrap();
        for (d, b) in digests.iter().zip(&bodies) {
            assert_eq!(
                &layout.read_small_blob(d, Some(b.len() as u64)).unwrap()[..],
                &b[..]
            );
        }
        let leftovers = std::fs::read_dir(dir.path().join(".airlock/tmp"))
            .unwrap()
            .count();
        assert_eq!(leftovers, 0);
        // Bytes that are not what their digest says are refused, naming it.
        let err = layout
            .write_small_blobs(&[(&digests[0], b"something else")])
            .unwrap_err();
        assert!(err.to_string().contains(digests[0].hex()), "{err}");
    }

    /// Chunks of every size, across batch and writeback boundaries, land
    /// in order and whole.
    #[tokio::test]
    async fn batched_writes_keep_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let mut data = Vec::new();
        let mut x = 7u32;
        while data.len() < (WRITE_BEHIND as usize) * 2 + BATCH / 3 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            data.extend_from_slice(&x.to_le_bytes());
        }
        let d = Digest::sha256_of(&data);
        let mut t = layout.begin_blob(&d).await.unwrap();
        let (mut at, mut step) = (0, 1);
        while at < data.len() {
            let end = (at + step).min(data.len());
            t.write(Bytes::copy_from_slice(&data[at..end]))
                .await
                .unwrap();
            at = end;
            step = step * 3 % (BATCH + 17) + 1;
        }
        t.commit().await.unwrap();
        let stored = std::fs::read(layout.blob_path(&d)).unwrap();
        assert_eq!(stored.len(), data.len());
        assert!(stored == data, "stored bytes differ");
    }

    #[test]
    fn upsert_replaces_by_name() {
        let mut index = Index::default();
        let mk = |name: &str, body: &[u8]| Descriptor {
            media_type: OCI_INDEX.into(),
            digest: Digest::sha256_of(body),
            size: body.len() as u64,
            platform: None,
            artifact_type: None,
            annotations: Some(BTreeMap::from([(REF_NAME.to_string(), name.to_string())])),
        };
        index.upsert(mk("a", b"1"));
        index.upsert(mk("b", b"2"));
        index.upsert(mk("a", b"3"));
        assert_eq!(index.manifests.len(), 2);
        assert_eq!(index.manifests[0].digest, Digest::sha256_of(b"3"));
    }
}
