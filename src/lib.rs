//! airlock moves container images across an air gap.
//!
//! The library is organised by the nouns of that job:
//!
//! - [`digest`]: validated digests and the one verifier every byte passes.
//! - [`reference`]: image references, normalised as docker does, and import
//!   targets.
//! - [`platform`]: `os/arch/variant` and how filters select index entries.
//! - [`manifest`]: media types, classification and descriptors; manifests
//!   keep their exact bytes.
//! - [`registry`]: the distribution protocol, with auth, retries, resumable
//!   downloads and verified uploads.
//! - [`layout`]: the OCI image layout on disk, written atomically.
//! - [`export`] and [`import`]: the transfer engines.
//! - [`progress`]: bars and the summary line.
//! - [`cli`]: the command line and the subcommands that drive the engines.
//!
//! The invariant that holds across all of them: nothing is renamed into a
//! bundle or reported as pushed before its digest and size were checked.

pub mod archive;
pub mod base;
pub mod bundle;
pub mod cli;
pub mod convert;
pub mod diffid;
pub mod digest;
pub mod export;
pub mod import;
pub mod inspect;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod platform;
pub mod progress;
pub mod reference;
pub mod referrers;
pub mod registry;
pub mod schema1;
pub mod verify;

/// An error and its causes on one line, `outer: inner: innermost`, for
/// reports that collect many failures as text.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        // Some errors (reqwest's) repeat their cause in their own message.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Runs `work` on a task of its own, so that the hashing of many blobs
/// spreads over every core, and reports its error (or the task's panic) as
/// one line of text for a run's report.
pub async fn on_task<T, E, F>(work: F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(r) => r.map_err(|e| error_chain(&e)),
        Err(e) => Err(format!("task failed: {e}")),
    }
}
