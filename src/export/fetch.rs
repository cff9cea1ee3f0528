//! The blob pool of a layout export: downloads start as soon as an image
//! is resolved, while the other images (and the referrers) are still being
//! asked for, and a blob's sync and rename run after its download has let
//! go of its slot.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc::UnboundedReceiver;

use super::ImageError;
use crate::base::Base;
use crate::digest::Digest;
use crate::layout::{Layout, LayoutError, TempBlob};
use crate::manifest::Descriptor;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::registry::Client;

/// The blobs of one resolved image, as resolution hands them over.
pub struct Found {
    pub reference: ImageRef,
    pub blobs: Vec<Descriptor>,
}

/// What the pool did.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Blobs that did not arrive or could not be stored, and why.
    pub failures: HashMap<Digest, String>,
    pub fetched: usize,
    pub bytes: u64,
    pub present: usize,
    pub omitted: usize,
}

/// A blob waiting for a slot. The biggest goes first: big blobs set the
/// length of a run, and small ones fill in around them at the end instead
/// of a big one running on alone.
struct Queued {
    blob: Descriptor,
    source: ImageRef,
    bar: indicatif::ProgressBar,
    /// Arrival order, to break ties the same way every run.
    seq: usize,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.blob
            .size
            .cmp(&other.blob.size)
            .then(other.seq.cmp(&self.seq))
    }
}

type Commit = tokio::task::JoinHandle<Result<(), LayoutError>>;

/// Fetches the blobs of every image that `found` hands over, until it is
/// closed and everything queued has landed.
///
/// `jobs` downloads run at once. A download lets go of its slot once its
/// blob is written and verified; the sync and rename follow on a task of
/// their own, because a sync can wait tens of milliseconds behind other
/// files' flushes and the network need not wait with it. At most `jobs`
/// blobs wait for their sync: a finished download waits for a place before
/// it lets go of its slot, so a slow disk (a USB stick) still holds the
/// downloads back and open files stay under twice `jobs`.
pub async fn fetch_all(
    client: &Client,
    layout: &Layout,
    mut found: UnboundedReceiver<Found>,
    since: Option<&Base>,
    jobs: usize,
    progress: &Progress,
) -> (Fetched, Vec<indicatif::ProgressBar>) {
    let jobs = jobs.max(1);
    let syncing = Arc::new(tokio::sync::Semaphore::new(jobs));
    let mut out = Fetched::default();
    let mut bars = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = BinaryHeap::new();
    let mut downloads = FuturesUnordered::new();
    let mut commits = FuturesUnordered::new();
    let mut open = true;
    loop {
        while downloads.len() < jobs {
            let Some(next) = queue.pop() else { break };
            downloads.push(download(client, layout, progress, next, &syncing));
        }
        tokio::select! {
            image = found.recv(), if open => match image {
                Some(image) => {
                    let bar = enqueue(layout, image, since, &mut seen, &mut queue, &mut out, progress);
                    bars.push(bar);
                }
                None => open = false,
            },
            Some((digest, outcome)) = downloads.next() => match outcome {
                Ok((size, commit)) => commits.push(finish(digest, size, commit)),
                Err(e) => {
                    out.failures.insert(digest, e);
                }
            },
            Some((digest, size, outcome)) = commits.next() => match outcome {
                Ok(()) => {
                    out.fetched += 1;
                    out.bytes += size;
                }
                Err(e) => {
                    out.failures.insert(digest, e);
                }
            },
            else => break,
        }
    }
    (out, bars)
}

/// Queues an image's blobs that are neither present, nor queued already,
/// nor left out for `--since`; returns the image's progress bar.
fn enqueue(
    layout: &Layout,
    image: Found,
    since: Option<&Base>,
    seen: &mut HashSet<Digest>,
    queue: &mut BinaryHeap<Queued>,
    out: &mut Fetched,
    progress: &Progress,
) -> indicatif::ProgressBar {
    let mut wanted = Vec::new();
    for blob in image.blobs {
        if !seen.insert(blob.digest.clone()) {
            continue;
        }
        if layout.has_blob(&blob.digest, blob.size) {
            out.present += 1;
        } else if since.is_some_and(|b| b.has(&blob.digest)) {
            // The bundle this one builds on carried it.
            out.omitted += 1;
        } else {
            // `seen` only grows: its size is a sequence number.
            wanted.push((seen.len(), blob));
        }
    }
    let bytes = wanted.iter().map(|(_, b)| b.size).sum();
    progress.add_total(bytes);
    let bar = progress.image(&image.reference.name(), bytes);
    for (seq, blob) in wanted {
        queue.push(Queued {
            blob,
            source: image.reference.clone(),
            bar: bar.clone(),
            seq,
        });
    }
    bar
}

/// Downloads one blob on a task of its own (its hashing then runs on any
/// core), waits for a place among the blobs being synced and starts its
/// commit.
async fn download(
    client: &Client,
    layout: &Layout,
    progress: &Progress,
    next: Queued,
    syncing: &Arc<tokio::sync::Semaphore>,
) -> (Digest, Result<(u64, Commit), String>) {
    let client = client.clone();
    let layout = layout.clone();
    let progress = progress.clone();
    let syncing = Arc::clone(syncing);
    let digest = next.blob.digest.clone();
    let outcome = crate::on_task(async move {
        let Queued {
            blob, source, bar, ..
        } = next;
        let temp = fetch_blob(&client, &layout, &source, &blob, &|n| {
            progress.advance(&bar, n)
        })
        .await?;
        let place = syncing.acquire_owned().await.expect("never closed");
        let commit = tokio::spawn(async move {
            let done = temp.commit().await;
            drop(place);
            if done.is_ok() {
                tracing::debug!("blob {}: {} bytes stored", blob.digest, blob.size);
            }
            done
        });
        Ok::<_, ImageError>((blob.size, commit))
    })
    .await;
    (digest, outcome)
}

async fn finish(digest: Digest, size: u64, commit: Commit) -> (Digest, u64, Result<(), String>) {
    let outcome = match commit.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(crate::error_chain(&e)),
        Err(e) => Err(format!("task failed: {e}")),
    };
    (digest, size, outcome)
}

/// Downloads one blob into the layout's work area, verified; the caller
/// commits it.
async fn fetch_blob(
    client: &Client,
    layout: &Layout,
    source: &ImageRef,
    blob: &Descriptor,
    advance: &(dyn Fn(u64) + Sync),
) -> Result<TempBlob, ImageError> {
    client
        .retry_corrupt(&blob.digest, || async {
            let mut reader = client.blob_reader(source, &blob.digest, blob.size);
            let mut temp = layout.begin_blob(&blob.digest).await?;
            // The reader verifies digest and size before it returns None,
            // so the rename in commit only ever publishes verified bytes.
            while let Some(chunk) = reader.next_chunk().await? {
                advance(chunk.len() as u64);
                temp.write(chunk).await?;
            }
            tracing::debug!("blob {}: received and verified", blob.digest);
            Ok(temp)
        })
        .await
}
