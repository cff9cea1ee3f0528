//! Offline verification of a bundle, reading it once.
//!
//! For an archive, each part is read sequentially, once: one thread hashes
//! the whole part while another checks every blob piece in it, and the tar
//! headers are checked as they pass (regular files at the names and offsets
//! the index gives, nothing else). For a layout, every blob reachable from
//! `index.json` is hashed. Problems are collected, never stop the run, and
//! are reported with the parts or files and the images they affect.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::sync::mpsc;
use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::archive::plan::BLOCK;
use crate::archive::read::{Archive, PartProblem};
use crate::archive::{PART_MEMBER, PIECES_DIR, part_label};
use crate::base::BaseInfo;
use crate::digest::{Digest, Verifier};
use crate::layout::{Layout, ref_name};
use crate::manifest::{Descriptor, Kind, Manifest};

/// The read size: large enough that syscalls do not matter.
const CHUNK: usize = 4 << 20;

/// What verification found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Every part checked, with its problem if any (archives only).
    pub parts: Vec<(u32, String, Option<PartProblem>)>,
    /// Blobs that are missing or do not match, with where they were.
    pub bad_blobs: Vec<(Digest, String)>,
    /// Images that cannot be used as they are, with why.
    pub bad_images: Vec<(String, String)>,
    pub images: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// For an incremental bundle: what it builds on and needs.
    pub base: Option<BaseInfo>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.bad_blobs.is_empty()
            && self.bad_images.is_empty()
            && self.parts.iter().all(|(_, _, p)| p.is_none())
    }
}

/// A piece of a blob within the part being read.
struct Slot {
    digest: Digest,
    offset: u64,
    length: u64,
    /// The blob's last piece: finish its verifier here.
    last: bool,
}

enum BlobMsg {
    Data(Digest, Bytes),
    End(Digest),
    /// This part cannot be read: blobs with pieces in it are unverifiable.
    Lost(Vec<Digest>, u32),
}

/// Verifies an archive: every part against the index, every blob against
/// its digest.
pub fn verify_archive(archive: &Archive) -> VerifyReport {
    let started = Instant::now();
    let index = &archive.index;
    let mut report = VerifyReport {
        images: index.images.len(),
        blobs: index.blobs.len(),
        base: index.base.clone(),
        ..VerifyReport::default()
    };

    // Pieces per part, in offset order.
    let mut slots: BTreeMap<u32, Vec<Slot>> = BTreeMap::new();
    for blob in &index.blobs {
        let n = blob.pieces.len();
        for (i, piece) in blob.pieces.iter().enumerate() {
            slots.entry(piece.part).or_default().push(Slot {
                digest: blob.digest.clone(),
                offset: piece.offset,
                length: piece.length,
                last: i + 1 == n,
            });
        }
    }
    for list in slots.values_mut() {
        list.sort_by_key(|s| s.offset);
    }

    let (tx, rx) = mpsc::sync_channel::<BlobMsg>(8);
    let sizes: HashMap<Digest, u64> = index
        .blobs
        .iter()
        .map(|b| (b.digest.clone(), b.size))
        .collect();
    let blob_thread = std::thread::spawn(move || check_blobs(rx, sizes));

    for part in &index.parts {
        let name = archive.paths.part(part.number).display().to_string();
        let mine = slots.remove(&part.number).unwrap_or_default();
        let problem = match archive.check_part(part.number) {
            Err(p) => {
                // Unreadable as a whole: its blobs cannot be checked. A part
                // that reads but hashes wrong is different: its blobs were
                // checked one by one, and only those that fail are bad.
                let lost = mine.iter().map(|s| s.digest.clone()).collect();
                let _ = tx.send(BlobMsg::Lost(lost, part.number));
                Some(p)
            }
            Ok(()) => read_part(
                archive,
                part.number,
                &part.sha256,
                &mine,
                &tx,
                &mut report.bytes,
            ),
        };
        report.parts.push((part.number, name, problem));
    }
    drop(tx);
    let bad_blobs = blob_thread.join().unwrap_or_default();

    // Name each bad blob's parts, and the images that need them.
    for (digest, why) in bad_blobs {
        let parts: Vec<String> = archive
            .parts_of(&digest)
            .iter()
            .map(|p| part_label(*p))
            .collect();
        report
            .bad_blobs
            .push((digest, format!("{why} (part {})", parts.join(", "))));
    }
    let bad: BTreeSet<&Digest> = report.bad_blobs.iter().map(|(d, _)| d).collect();
    for image in &index.images {
        let mut parts = BTreeSet::new();
        for d in image.blobs.iter().filter(|d| bad.contains(d)) {
            parts.extend(archive.parts_of(d));
        }
        if !parts.is_empty() {
            let names: Vec<String> = parts.iter().map(|p| part_label(*p)).collect();
            report.bad_images.push((
                image.name.clone(),
                format!("needs part {}", names.join(", ")),
            ));
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Reads one part once: hashes it, checks its tar headers, and hands each
/// blob piece to the blob thread.
fn read_part(
    archive: &Archive,
    number: u32,
    expected_sha: &str,
    slots: &[Slot],
    blobs: &mpsc::SyncSender<BlobMsg>,
    bytes_read: &mut u64,
) -> Option<PartProblem> {
    let path = archive.paths.part(number);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return Some(PartProblem::Unreadable(e.to_string())),
    };
    let (part_tx, part_rx) = mpsc::sync_channel::<Bytes>(4);
    let hasher = std::thread::spawn(move || {
        let mut h = Sha256::new();
        for chunk in part_rx {
            h.update(&chunk);
        }
        hex::encode(h.finalize())
    });

    let mut headers = HeaderScan::new(number, slots);
    let mut pos = 0u64;
    let mut slot = 0usize;
    let mut problem = None;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = match read_full(&mut file, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                problem = Some(PartProblem::Unreadable(e.to_string()));
                break;
            }
        };
        buf.truncate(n);
        let chunk = Bytes::from(buf);
        if problem.is_none()
            && let Err(p) = headers.feed(pos, &chunk)
        {
            problem = Some(p);
        }
        // Hand each piece overlapping this chunk to the blob checker.
        let end = pos + n as u64;
        while slot < slots.len() {
            let s = &slots[slot];
            let (lo, hi) = (s.offset.max(pos), (s.offset + s.length).min(end));
            if lo < hi {
                let data = chunk.slice((lo - pos) as usize..(hi - pos) as usize);
                let _ = blobs.send(BlobMsg::Data(s.digest.clone(), data));
            }
            if s.offset + s.length <= end {
                if s.last {
                    let _ = blobs.send(BlobMsg::End(s.digest.clone()));
                }
                slot += 1;
            } else {
                break;
            }
        }
        let _ = part_tx.send(chunk);
        pos = end;
        *bytes_read += n as u64;
    }
    drop(part_tx);
    let actual = hasher.join().unwrap_or_default();
    if problem.is_some() {
        return problem;
    }
    if let Err(p) = headers.finish() {
        return Some(p);
    }
    (actual != expected_sha).then_some(PartProblem::Corrupt { actual })
}

/// Verifies blobs from the pieces the part readers hand over.
fn check_blobs(rx: mpsc::Receiver<BlobMsg>, sizes: HashMap<Digest, u64>) -> Vec<(Digest, String)> {
    let mut open: HashMap<Digest, Verifier> = HashMap::new();
    let mut lost: HashMap<Digest, u32> = HashMap::new();
    let mut bad = Vec::new();
    for msg in rx {
        match msg {
            BlobMsg::Data(d, bytes) => {
                if lost.contains_key(&d) {
                    continue;
                }
                let v = open
                    .entry(d.clone())
                    .or_insert_with(|| Verifier::new(&d, sizes.get(&d).copied()));
                if let Err(e) = v.update(&bytes) {
                    open.remove(&d);
                    lost.insert(d.clone(), 0);
                    bad.push((d, e.to_string()));
                }
            }
            BlobMsg::End(d) => {
                if lost.contains_key(&d) {
                    continue;
                }
                // An empty blob gets no data, only its end.
                let v = open
                    .remove(&d)
                    .unwrap_or_else(|| Verifier::new(&d, sizes.get(&d).copied()));
                if let Err(e) = v.finish() {
                    bad.push((d, e.to_string()));
                }
            }
            BlobMsg::Lost(digests, part) => {
                for d in digests {
                    open.remove(&d);
                    if lost.insert(d.clone(), part).is_none() {
                        bad.push((
                            d,
                            format!("cannot be checked: part {} is bad", part_label(part)),
                        ));
                    }
                }
            }
        }
    }
    // Started but never finished: a part stopped short of the blob's end.
    for d in open.into_keys() {
        bad.push((d, "incomplete: its bytes end early".to_string()));
    }
    bad
}

/// Walks the tar headers of a part as its bytes pass.
struct HeaderScan<'a> {
    part: u32,
    /// Offset of the next header, `None` after the end marker.
    next: Option<u64>,
    block: Vec<u8>,
    /// Data offset -> the piece the index says is there.
    expected: HashMap<u64, &'a Slot>,
    seen: usize,
}

impl<'a> HeaderScan<'a> {
    fn new(part: u32, slots: &'a [Slot]) -> HeaderScan<'a> {
        HeaderScan {
            part,
            next: Some(0),
            block: Vec::with_capacity(BLOCK as usize),
            expected: slots.iter().map(|s| (s.offset, s)).collect(),
            seen: 0,
        }
    }

    fn feed(&mut self, pos: u64, chunk: &[u8]) -> Result<(), PartProblem> {
        let end = pos + chunk.len() as u64;
        while let Some(next) = self.next {
            let want_from = next + self.block.len() as u64;
            if want_from >= end {
                break;
            }
            let take = (BLOCK as usize - self.block.len()).min((end - want_from) as usize);
            let from = (want_from - pos) as usize;
            self.block.extend_from_slice(&chunk[from..from + take]);
            if self.block.len() < BLOCK as usize {
                break;
            }
            let block = std::mem::take(&mut self.block);
            self.next = self.header(next, &block)?;
        }
        Ok(())
    }

    /// Checks one header; returns where the next one is.
    fn header(&mut self, at: u64, block: &[u8]) -> Result<Option<u64>, PartProblem> {
        if block.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let bad = |why: String| PartProblem::BadMember(format!("at byte {at}: {why}"));
        let header = tar::Header::from_byte_slice(block);
        let stored = header
            .cksum()
            .map_err(|e| bad(format!("bad header: {e}")))?;
        let computed: u32 = block
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    *b as u32
                }
            })
            .sum();
        if stored != computed {
            return Err(bad("header checksum does not match".to_string()));
        }
        if !matches!(header.entry_type(), tar::EntryType::Regular) {
            return Err(bad(format!(
                "{:?} entries are not allowed",
                header.entry_type()
            )));
        }
        let name = String::from_utf8_lossy(&header.path_bytes()).to_string();
        let size = header.size().map_err(|e| bad(format!("bad size: {e}")))?;
        let data = at + BLOCK;
        let metadata = ["oci-layout", "index.json", "manifest.json"];
        let ok = if name == PART_MEMBER {
            at == 0
        } else if metadata.contains(&name.as_str()) {
            self.part == 1
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/").or_else(|| {
            name.strip_prefix(&format!("{PIECES_DIR}/sha256/"))
                .and_then(|rest| rest.rsplit_once('.').map(|(h, _)| h))
        }) {
            let slot = self.expected.get(&data);
            slot.is_some_and(|s| s.digest.hex() == hex && s.length == size)
        } else {
            false
        };
        if !ok {
            return Err(bad(format!(
                "{name:?} ({size} bytes) is not where the index puts anything"
            )));
        }
        if name.starts_with("blobs/") || name.starts_with(PIECES_DIR) {
            self.seen += 1;
        }
        Ok(Some(data + size.div_ceil(BLOCK) * BLOCK))
    }

    fn finish(&self) -> Result<(), PartProblem> {
        if self.seen != self.expected.len() {
            return Err(PartProblem::BadMember(format!(
                "holds {} blob members, the index lists {}",
                self.seen,
                self.expected.len()
            )));
        }
        Ok(())
    }
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Verifies a layout: every blob reachable from `index.json`.
pub fn verify_layout(layout: &Layout, base: Option<&BaseInfo>) -> VerifyReport {
    let started = Instant::now();
    let mut report = VerifyReport {
        base: base.cloned(),
        ..VerifyReport::default()
    };
    let index = match layout.read_index() {
        Ok(i) => i,
        Err(e) => {
            report
                .bad_images
                .push(("index.json".into(), crate::error_chain(&e)));
            return report;
        }
    };
    report.images = index.manifests.len();
    let mut checked: HashMap<Digest, Option<String>> = HashMap::new();
    for entry in &index.manifests {
        let name = ref_name(entry).unwrap_or("(unnamed)").to_string();
        let mut stack = vec![(entry.clone(), 0usize)];
        let mut problems = Vec::new();
        while let Some((d, depth)) = stack.pop() {
            // Left out of an incremental bundle: its base carried it.
            if base.is_some_and(|b| b.omits(&d.digest)) {
                continue;
            }
            let result = checked
                .entry(d.digest.clone())
                .or_insert_with(|| check_file(layout, &d, &mut report.bytes))
                .clone();
            if result.is_some() {
                problems.push(format!("needs blob {}, which is bad", d.digest));
                continue;
            }
            if Manifest::is_manifest_type(&d.media_type) && depth < 8 {
                match layout
                    .read_small_blob(&d.digest, Some(d.size))
                    .map_err(|e| crate::error_chain(&e))
                    .and_then(|b| {
                        Manifest::parse(d.digest.clone(), b, Some(&d.media_type))
                            .map_err(|e| crate::error_chain(&e))
                    }) {
                    Ok(m) if m.kind == Kind::Index => {
                        stack.extend(m.manifests.into_iter().map(|c| (c, depth + 1)))
                    }
                    Ok(m) => stack.extend(m.blobs.into_iter().map(|c: Descriptor| (c, depth + 1))),
                    Err(e) => problems.push(e),
                }
            }
        }
        if !problems.is_empty() {
            report.bad_images.push((name, problems.join("; ")));
        }
    }
    report.blobs = checked.len();
    for (digest, why) in checked {
        if let Some(why) = why {
            let path = layout.blob_path(&digest).display().to_string();
            report.bad_blobs.push((digest, format!("{why} ({path})")));
        }
    }
    report.bad_blobs.sort();
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Hashes one blob file; `Some(why)` when it is missing or wrong.
fn check_file(layout: &Layout, d: &Descriptor, bytes: &mut u64) -> Option<String> {
    let path = layout.blob_path(&d.digest);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(_) => return Some("missing".to_string()),
    };
    let mut v = Verifier::new(&d.digest, Some(d.size));
    let mut buf = vec![0u8; CHUNK];
    loop {
        match read_full(&mut file, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                *bytes += n as u64;
                if let Err(e) = v.update(&buf[..n]) {
                    return Some(e.to_string());
                }
            }
            Err(e) => return Some(e.to_string()),
        }
    }
    v.finish().err().map(|e| e.to_string())
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_scan_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            cut in 1usize..700,
        ) {
            let slot = Slot { digest: Digest::sha256_of(b""), offset: 512, length: 3, last: true };
            let slots = [slot];
            let mut scan = HeaderScan::new(1, &slots);
            let mut pos = 0u64;
            for chunk in bytes.chunks(cut) {
                if scan.feed(pos, chunk).is_err() {
                    break;
                }
                pos += chunk.len() as u64;
            }
            let _ = scan.finish();
        }
    }

    #[test]
    fn refuses_symlink_and_traversal_members() {
        for (name, kind) in [
            ("blobs/sha256/../../../etc/passwd", tar::EntryType::Regular),
            ("/etc/passwd", tar::EntryType::Regular),
            ("blobs/sha256/x", tar::EntryType::Symlink),
            ("blobs/sha256/x", tar::EntryType::Link),
            ("dev", tar::EntryType::Char),
        ] {
            let mut h = tar::Header::new_ustar();
            let _ = h.set_path(name);
            // set_path refuses some of these; write the name raw then.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(0);
            h.set_entry_type(kind);
            h.set_cksum();
            let mut scan = HeaderScan::new(1, &[]);
            let err = scan.feed(0, h.as_bytes()).unwrap_err();
            assert!(matches!(err, PartProblem::BadMember(_)), "{name}: {err:?}");
        }
    }
}
