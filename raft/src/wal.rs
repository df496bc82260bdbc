//! A segmented write-ahead log: the durable half of the Raft log store (issue 12).
//!
//! The log is a directory of segment files, `<seq:016x>.wal`, written strictly in order. A
//! segment starts with a 32-byte header (magic, format, its sequence number, a CRC) and holds
//! records one after the other, each 8-byte aligned:
//!
//! ```text
//! u32 len | u32 crc32(batch ‖ kind ‖ payload) | u64 batch | u8 kind | payload[len] | zero padding
//! ```
//!
//! The WAL does not know what records mean (`kind` is the caller's; 0 is reserved): the log
//! store writes entries, votes, the committed id and purges as records, and rebuilds its state by
//! replaying them. Segments are preallocated (`fallocate`), so the end of the data is the first
//! all-zero record header.
//!
//! **Durability.** [`Wal::append`] writes one *batch* of records and `fdatasync`s the segment
//! before it returns: many records, one sync (group commit). Batches are numbered; batch n+1 is
//! written only after batch n's sync returned. A new segment's file and directory entry are
//! synced before any record goes into it.
//!
//! **Recovery** ([`Wal::open`]) reads every segment and refuses to start on anything that a
//! crash cannot explain, naming the file and the offset: a bad segment header, a missing
//! segment, a record that fails its CRC or runs past its segment anywhere but in the last batch
//! of the last segment. There, and only there, a bad record is a *torn tail*: the batch being
//! written when the process or the machine died, never synced and so never acknowledged. It is
//! cut off (and reported); everything before it is kept. A torn record is told from real
//! corruption by what follows it: a valid record of a later batch after it means the bad record
//! had been synced, so it is corruption.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Magic bytes at the start of every segment.
const MAGIC: &[u8; 8] = b"SHOALWAL";
/// The segment format this code writes and reads.
pub(crate) const FORMAT: u32 = 1;
/// Bytes of a segment header.
const SEGMENT_HEADER: u64 = 32;
/// Bytes of a record header (before the payload).
const RECORD_HEADER: u64 = 17;
/// Records start at multiples of this.
const ALIGN: u64 = 8;
/// The largest payload a record may carry (a snapshot never goes through the WAL).
pub(crate) const MAX_PAYLOAD: usize = 64 << 20;

/// Why the WAL cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WalError {
    /// The file system refused an operation.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The log holds something a crash cannot explain: the store must not be used.
    #[error("{path} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How the WAL lays out its files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// A segment is closed and a new one started once it holds this many bytes; it is also the
    /// size each segment is preallocated to.
    pub segment_bytes: u64,
    /// Added to every batch's sync: a slow disk, for tests (`Config::sync_delay`).
    pub sync_delay: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            sync_delay: std::time::Duration::ZERO,
        }
    }
}

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The batch it was written in.
    pub batch: u64,
    /// The caller's record kind (never 0).
    pub kind: u8,
    /// The caller's bytes.
    pub payload: Vec<u8>,
    /// The segment it is in.
    pub segment: u64,
}

/// What [`Wal::open`] found.
#[derive(Debug)]
pub(crate) struct Recovery {
    /// Every record, in the order written.
    pub records: Vec<Record>,
    /// Where a torn tail was cut off, if one was: the segment file and the offset.
    pub torn: Option<(PathBuf, u64)>,
}

/// An open WAL, positioned to append.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    opts: Options,
    /// Sequence numbers of the segments on disk, oldest first (never empty once open).
    segments: Vec<u64>,
    active: File,
    active_path: PathBuf,
    /// Where the next record goes in the active segment.
    offset: u64,
    /// The number of the next batch.
    next_batch: u64,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

fn align(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut h = [0u8; SEGMENT_HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

fn record_crc(batch: u64, kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&batch.to_le_bytes());
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

/// Appends the encoding of one record to `out`.
fn encode_record(out: &mut Vec<u8>, batch: u64, kind: u8, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&record_crc(batch, kind, payload).to_le_bytes());
    out.extend_from_slice(&batch.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let padded = align((out.len() - start) as u64) as usize;
    out.resize(start + padded, 0);
}

/// A record header parsed at some offset, if a whole valid record starts there.
fn parse_record(buf: &[u8], at: usize) -> Result<(u64, u8, &[u8], usize), String> {
    let head = buf
        .get(at..at + RECORD_HEADER as usize)
        .ok_or("a record header runs past the end of the segment")?;
    let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let batch = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let kind = head[16];
    if kind == 0 {
        return Err("a record of kind 0".into());
    }
    if len > MAX_PAYLOAD {
        return Err(format!("a record length of {len} bytes"));
    }
    let body = at + RECORD_HEADER as usize;
    let payload = buf
        .get(body..body + len)
        .ok_or("a record runs past the end of the segment")?;
    if record_crc(batch, kind, payload) != crc {
        return Err("a record fails its CRC".into());
    }
    let next = at + align(RECORD_HEADER + len as u64) as usize;
    Ok((batch, kind, payload, next))
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|x| *x == 0)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// Reserves `len` bytes of `file` on disk, so that writes into it need no allocation and a
/// data sync needs no metadata (the file's size does not change).
fn preallocate(file: &File, path: &Path, len: u64) -> Result<(), WalError> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        // File systems without fallocate (tmpfs supports it; some others do not): a sparse file
        // of the same size reads the same zeros.
        Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(len).map_err(io_at(path)),
        Err(e) => Err(io_at(path)(e.into())),
    }
}

impl Wal {
    /// Opens (or creates, when `dir` holds no segment) the WAL in `dir`, replays it, cuts off a
    /// torn tail if the last batch has one, and positions the WAL to append after the last
    /// good record.
    pub(crate) fn open(dir: &Path, opts: Options) -> Result<(Wal, Recovery), WalError> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let mut segments = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_at(dir))? {
            let e = e.map_err(io_at(dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            match parse_segment_name(&name) {
                Some(seq) => segments.push(seq),
                // A segment whose creation a crash interrupted, never named nor used.
                None if name.ends_with(".wal.tmp") => {
                    std::fs::remove_file(e.path()).map_err(io_at(&e.path()))?;
                }
                None => {
                    return Err(WalError::Corrupt {
                        path: e.path(),
                        offset: 0,
                        reason: "an unknown file in the log directory".into(),
                    })
                }
            }
        }
        segments.sort_unstable();
        for w in segments.windows(2) {
            if w[1] != w[0] + 1 {
                return Err(WalError::Corrupt {
                    path: dir.join(segment_name(w[0] + 1)),
                    offset: 0,
                    reason: format!(
                        "segment {:016x} is missing between {:016x} and {:016x}",
                        w[0] + 1,
                        w[0],
                        w[1]
                    ),
                });
            }
        }
        let mut records = Vec::new();
        let mut torn = None;
        let mut last_batch: Option<u64> = None;
        let mut end_of_last = SEGMENT_HEADER;
        let count = segments.len();
        for (i, &seq) in segments.iter().enumerate() {
            let last = i + 1 == count;
            let path = dir.join(segment_name(seq));
            let mut buf = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(io_at(&path))?;
            let corrupt = |offset: u64, reason: String| WalError::Corrupt {
                path: path.clone(),
                offset,
                reason,
            };
            // A segment gets its name only once its header is synced (see `create_segment`),
            // so no crash explains a bad header.
            if buf.len() < SEGMENT_HEADER as usize
                || buf[..SEGMENT_HEADER as usize] != segment_header(seq)
            {
                return Err(corrupt(0, "not a segment header of this format".into()));
            }
            let mut at = SEGMENT_HEADER as usize;
            loop {
                let rest = &buf[at.min(buf.len())..];
                if rest.len() < RECORD_HEADER as usize && is_zero(rest) {
                    break;
                }
                if rest.len() >= RECORD_HEADER as usize && is_zero(&rest[..RECORD_HEADER as usize])
                {
                    break;
                }
                match parse_record(&buf, at) {
                    Ok((batch, kind, payload, next)) => {
                        if last_batch.is_some_and(|b| batch < b) {
                            return Err(corrupt(
                                at as u64,
                                format!("batch {batch} after batch {}", last_batch.unwrap_or(0)),
                            ));
                        }
                        last_batch = Some(batch);
                        records.push(Record {
                            batch,
                            kind,
                            payload: payload.to_vec(),
                            segment: seq,
                        });
                        at = next;
                    }
                    Err(reason) => {
                        if !last {
                            return Err(corrupt(at as u64, reason));
                        }
                        // A torn tail belongs to the batch being written at the crash: the
                        // last good record's, or the next. A valid record of any other batch
                        // after it proves the bad record had been synced. With no good record
                        // before it in the segment, nothing valid may follow it at all.
                        let torn_batches = last_batch.map(|b| b..=b + 1);
                        let mut probe = at + ALIGN as usize;
                        while probe + RECORD_HEADER as usize <= buf.len() {
                            if let Ok((batch, _, _, _)) = parse_record(&buf, probe) {
                                if !torn_batches.as_ref().is_some_and(|r| r.contains(&batch)) {
                                    return Err(corrupt(
                                        at as u64,
                                        format!(
                                            "{reason}, and a record of batch {batch} follows it"
                                        ),
                                    ));
                                }
                            }
                            probe += ALIGN as usize;
                        }
                        torn = Some((path.clone(), at as u64));
                        break;
                    }
                }
            }
            if last {
                end_of_last = at as u64;
                // Whatever lies after the good data (a torn batch, or pages of it written out of
                // order) is zeroed, so that records appended now are never followed by stale ones.
                if at < buf.len() && !is_zero(&buf[at..]) {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_at(&path))?;
                    f.write_all_at(&vec![0u8; buf.len() - at], at as u64)
                        .map_err(io_at(&path))?;
                    f.sync_data().map_err(io_at(&path))?;
                    if torn.is_none() {
                        torn = Some((path.clone(), at as u64));
                    }
                }
            }
        }
        let next_batch = last_batch.map_or(1, |b| b + 1);
        let wal = match segments.last() {
            Some(&seq) => {
                let active_path = dir.join(segment_name(seq));
                let active = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&active_path)
                    .map_err(io_at(&active_path))?;
                Wal {
                    dir: dir.to_path_buf(),
                    opts,
                    segments,
                    active,
                    active_path,
                    offset: end_of_last,
                    next_batch,
                }
            }
            None => {
                let (active, active_path) = Self::create_segment(dir, opts, 1)?;
                Wal {
                    dir: dir.to_path_buf(),
                    opts,
                    segments: vec![1],
                    active,
                    active_path,
                    offset: SEGMENT_HEADER,
                    next_batch,
                }
            }
        };
        Ok((wal, Recovery { records, torn }))
    }

    /// Creates segment `seq` with its header, preallocated, synced with its directory entry.
    fn create_segment(dir: &Path, opts: Options, seq: u64) -> Result<(File, PathBuf), WalError> {
        let path = dir.join(segment_name(seq));
        let tmp = dir.join(format!("{}.tmp", segment_name(seq)));
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        preallocate(
            &f,
            &tmp,
            opts.segment_bytes.max(SEGMENT_HEADER + RECORD_HEADER),
        )?;
        f.write_all(&segment_header(seq)).map_err(io_at(&tmp))?;
        f.sync_all().map_err(io_at(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_at(&path))?;
        sync_dir(dir)?;
        Ok((f, path))
    }

    /// The sequence number of the segment records are appended to now.
    pub(crate) fn active_segment(&self) -> u64 {
        *self.segments.last().expect("an open WAL has a segment")
    }

    /// The sequence numbers of the segments on disk, oldest first.
    #[cfg(test)]
    pub(crate) fn segments(&self) -> &[u64] {
        &self.segments
    }

    /// Whether the active segment is full, so that the caller should [`Wal::rotate`] (and begin
    /// the new segment with whatever state it needs to survive the old ones' removal).
    pub(crate) fn wants_rotation(&self) -> bool {
        self.offset >= self.opts.segment_bytes
    }

    /// Closes the active segment and starts the next one.
    pub(crate) fn rotate(&mut self) -> Result<(), WalError> {
        let seq = self.active_segment() + 1;
        let (f, path) = Self::create_segment(&self.dir, self.opts, seq)?;
        self.active = f;
        self.active_path = path;
        self.offset = SEGMENT_HEADER;
        self.segments.push(seq);
        Ok(())
    }

    /// Writes `records` (kind, payload) as one batch and syncs them: when this returns `Ok`, they
    /// survive a crash. Returns the batch number. A batch larger than the room left in the
    /// segment grows the segment (the preallocation is a hint, not a limit).
    pub(crate) fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = (u8, &'a [u8])>,
    ) -> Result<u64, WalError> {
        let batch = self.next_batch;
        let mut buf = Vec::new();
        for (kind, payload) in records {
            assert!(kind != 0, "record kind 0 is reserved");
            assert!(payload.len() <= MAX_PAYLOAD, "record payload too large");
            encode_record(&mut buf, batch, kind, payload);
        }
        if buf.is_empty() {
            return Ok(batch);
        }
        self.active
            .write_all_at(&buf, self.offset)
            .map_err(io_at(&self.active_path))?;
        self.active.sync_data().map_err(io_at(&self.active_path))?;
        if !self.opts.sync_delay.is_zero() {
            std::thread::sleep(self.opts.sync_delay);
        }
        self.offset += buf.len() as u64;
        self.next_batch += 1;
        Ok(batch)
    }

    /// Removes the segments older than `seq` (never the active one): the caller knows that
    /// nothing in them is needed any more.
    pub(crate) fn remove_before(&mut self, seq: u64) -> Result<(), WalError> {
        let seq = seq.min(self.active_segment());
        let mut removed = false;
        while self.segments.first().is_some_and(|s| *s < seq) {
            let s = self.segments.remove(0);
            let path = self.dir.join(segment_name(s));
            std::fs::remove_file(&path).map_err(io_at(&path))?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Options {
        Options {
            segment_bytes: 4096,
            ..Options::default()
        }
    }

    fn open(dir: &Path) -> Result<(Wal, Recovery), WalError> {
        Wal::open(dir, small())
    }

    fn payloads(r: &Recovery) -> Vec<Vec<u8>> {
        r.records.iter().map(|r| r.payload.clone()).collect()
    }

    fn write_batches(dir: &Path, batches: &[&[&[u8]]]) -> Wal {
        let (mut w, r) = open(dir).unwrap();
        assert!(r.records.is_empty() && r.torn.is_none());
        for b in batches {
            w.append(b.iter().map(|p| (1u8, *p))).unwrap();
        }
        w
    }

    fn seg(dir: &Path, seq: u64) -> PathBuf {
        dir.join(segment_name(seq))
    }

    fn flip(path: &Path, at: u64) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x40;
        f.write_all_at(&b, at).unwrap();
    }

    #[test]
    fn records_round_trip_across_restarts_and_batches_keep_counting() {
        let d = tempfile::tempdir().unwrap();
        let mut w = write_batches(d.path(), &[&[b"a", b"bb"], &[b"ccc"]]);
        assert_eq!(w.append([(2u8, &b""[..])]).unwrap(), 3);
        drop(w);
        let (mut w, r) = open(d.path()).unwrap();
        assert_eq!(r.torn, None);
        assert_eq!(
            payloads(&r),
            vec![b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec(), vec![]]
        );
        assert_eq!(
            r.records
                .iter()
                .map(|r| (r.batch, r.kind))
                .collect::<Vec<_>>(),
            vec![(1, 1), (1, 1), (2, 1), (3, 2)]
        );
        assert_eq!(w.append([(1u8, &b"d"[..])]).unwrap(), 4);
        drop(w);
        let (_, r) = open(d.path()).unwrap();
        assert_eq!(r.records.len(), 5);
    }

    #[test]
    fn rotation_and_removal_keep_what_remains_readable() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path()).unwrap();
        let big = vec![7u8; 1500];
        for _ in 0..5 {
            w.append([(1u8, big.as_slice())]).unwrap();
            if w.wants_rotation() {
                w.rotate().unwrap();
            }
        }
        assert!(w.segments().len() >= 2, "{:?}", w.segments());
        let first_kept = w.active_segment();
        w.remove_before(first_kept).unwrap();
        w.append([(3u8, &b"after"[..])]).unwrap();
        drop(w);
        let (w, r) = open(d.path()).unwrap();
        assert_eq!(w.segments(), &[first_kept]);
        assert_eq!(r.records.last().unwrap().payload, b"after");
        assert!(r.records.iter().all(|r| r.segment == first_kept));
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_the_rest_kept() {
        let d = tempfile::tempdir().unwrap();
        let w = write_batches(d.path(), &[&[b"one"], &[b"two", b"three"]]);
        let end = w.offset;
        drop(w);
        // The crash cut the last record: its last bytes never reached the disk.
        let path = seg(d.path(), 1);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0u8; 8], end - 8).unwrap();
        let (mut w, r) = open(d.path()).unwrap();
        assert_eq!(payloads(&r), vec![b"one".to_vec(), b"two".to_vec()]);
        let (p, at) = r.torn.expect("reported");
        assert_eq!(p, path);
        assert!(at > SEGMENT_HEADER && at < end);
        // Appending after the cut, then reading again, sees no trace of the torn record.
        w.append([(1u8, &b"four"[..])]).unwrap();
        drop(w);
        let (_, r) = open(d.path()).unwrap();
        assert_eq!(
            payloads(&r),
            vec![b"one".to_vec(), b"two".to_vec(), b"four".to_vec()]
        );
        assert_eq!(r.torn, None);
    }

    #[test]
    fn corruption_before_the_last_batch_is_refused_with_file_and_offset() {
        let d = tempfile::tempdir().unwrap();
        drop(write_batches(
            d.path(),
            &[&[b"one"], &[b"two"], &[b"three"]],
        ));
        let path = seg(d.path(), 1);
        // A flipped bit in the first record's payload: later batches follow it.
        flip(&path, SEGMENT_HEADER + RECORD_HEADER);
        let before = std::fs::read(&path).unwrap();
        let e = open(d.path()).unwrap_err();
        match &e {
            WalError::Corrupt {
                path: p, offset, ..
            } => {
                assert_eq!(p, &path);
                assert_eq!(*offset, SEGMENT_HEADER);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string()
                .contains("0000000000000001.wal is corrupt at offset 32"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the file is left as it was"
        );
    }

    #[test]
    fn corruption_in_an_older_segment_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path()).unwrap();
        let big = vec![1u8; 3000];
        w.append([(1u8, big.as_slice())]).unwrap();
        w.rotate().unwrap();
        w.append([(1u8, &b"x"[..])]).unwrap();
        drop(w);
        flip(&seg(d.path(), 1), SEGMENT_HEADER + RECORD_HEADER + 100);
        assert!(matches!(
            open(d.path()),
            Err(WalError::Corrupt { offset: 32, .. })
        ));
    }

    #[test]
    fn a_bad_header_a_zeroed_or_truncated_segment_and_a_missing_one_are_refused() {
        for damage in ["header", "zero", "truncate", "missing"] {
            let d = tempfile::tempdir().unwrap();
            let (mut w, _) = open(d.path()).unwrap();
            w.append([(1u8, &b"a"[..])]).unwrap();
            w.rotate().unwrap();
            w.append([(1u8, &b"b"[..])]).unwrap();
            w.rotate().unwrap();
            w.append([(1u8, &b"c"[..])]).unwrap();
            drop(w);
            let first = seg(d.path(), 1);
            match damage {
                "header" => flip(&first, 3),
                "zero" => {
                    let len = std::fs::metadata(&first).unwrap().len();
                    std::fs::write(&first, vec![0u8; len as usize]).unwrap();
                }
                "truncate" => std::fs::write(&first, b"").unwrap(),
                _ => std::fs::remove_file(seg(d.path(), 2)).unwrap(),
            }
            let e = open(d.path()).unwrap_err();
            assert!(matches!(e, WalError::Corrupt { .. }), "{damage}: {e:?}");
        }
    }

    #[test]
    fn a_segment_whose_creation_was_interrupted_is_removed_but_a_zeroed_one_is_refused() {
        let d = tempfile::tempdir().unwrap();
        drop(write_batches(d.path(), &[&[b"a"]]));
        // The crash came before the new segment was named: only its temporary file exists.
        let tmp = d.path().join(format!("{}.tmp", segment_name(2)));
        std::fs::write(&tmp, vec![0u8; 4096]).unwrap();
        let (w, r) = open(d.path()).unwrap();
        assert_eq!(payloads(&r), vec![b"a".to_vec()]);
        assert_eq!(w.segments(), &[1]);
        assert!(!tmp.exists());
        drop(w);
        // A named segment is never without its header: a zeroed one is damage, even the last.
        std::fs::write(seg(d.path(), 2), vec![0u8; 4096]).unwrap();
        assert!(matches!(
            open(d.path()),
            Err(WalError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn a_bad_record_followed_by_a_later_batch_is_corruption_not_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        drop(write_batches(
            d.path(),
            &[&[b"one"], &[b"two"], &[b"three"], &[b"four"]],
        ));
        let path = seg(d.path(), 1);
        // Damage the record of batch 2: batches 3 and 4 follow it, so batch 2 had been synced.
        let second = SEGMENT_HEADER + align(RECORD_HEADER + 3);
        flip(&path, second + 4);
        let e = open(d.path()).unwrap_err();
        assert!(
            matches!(&e, WalError::Corrupt { offset, reason, .. } if *offset == second && reason.contains("batch 3 follows")),
            "{e:?}"
        );
    }

    #[test]
    fn garbage_in_the_log_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        drop(write_batches(d.path(), &[&[b"a"]]));
        std::fs::write(d.path().join("stray"), b"x").unwrap();
        assert!(matches!(open(d.path()), Err(WalError::Corrupt { .. })));
    }
}
