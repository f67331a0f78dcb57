//! The store's journal: each group commit is one record appended to `<state_path>.journal`
//! and made durable with one `fdatasync`; the redb file takes the journal's changes in
//! bulk now and then (a checkpoint), after which the journal starts empty again.
//!
//! Why (issue 13): a redb commit costs the store thread ~270 us of CPU (its freed- and
//! allocated-page tables, the table tree, checksums: ~230,000 instructions, and writing
//! 8 pages), whatever the batch carries; under a flood that was a third of the CPU a
//! durable create took. A journal append is one `pwrite` and one `fdatasync`, and a
//! checkpoint pays redb's per-commit cost once for up to [`CHECKPOINT_OPS`] changes.
//!
//! Never replayed twice: each checkpoint writes, in the same redb transaction, a mark
//! of the last record it applied ([`Mark`]: the generation and the next number), and
//! replay skips every record at or below it. A record the store has stays a link of the
//! chain, though: after a crash that tore the append that was overwriting the journal's
//! start, the old first record can be whole and its successor damaged, and replaying
//! that first record alone would undo the removal that followed it (found in review,
//! `store::tests::journal::a_torn_append_over_checkpointed_records_brings_nothing_back`). Order
//! is kept: one thread appends, and replay applies records in file order, only while
//! their numbers follow one another.
//!
//! Appended, and emptied by truncation. Not preallocated and overwritten in place, though
//! that saves the `fdatasync` the new size (93 against 107-150 us at the median here): on
//! this kernel (6.18) a file written in large pieces, or read back, sits in the page
//! cache in large folios, and each small overwrite then wrote the whole folio back, 1 MiB
//! per commit (`write_bytes` in /proc). Appends dirty 4 KiB pages.
//!
//! Framing, each record: `LGJ1`, its generation (u64), its number (u64), the payload's
//! length (u32), a CRC-32 of generation, number, length and payload (u32), the payload (the
//! changes, [`encode`]). Each open starts a new generation (one above the last, kept in
//! the store file) numbered from 0, so
//! replay takes the first record's generation and stops at the first record that is
//! incomplete, fails its CRC, or is not the next of that generation: zeros, the end of an
//! append that was cut off (its commit was never acknowledged), or a record left further
//! on from before the journal was last emptied (an older number, or an older generation).
//! A record that passes its CRC but does not decode was written by another program or
//! version, and start-up refuses it rather than guess.
//!
//! Why by hand: the framing is 20 bytes and a CRC (crc32fast), and the changes are four
//! small shapes; an embedded log crate would bring its own file format and threads.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use uuid::Uuid;

use super::{Op, StoredSession};
use crate::label::Label;
use crate::queue::SessionId;

const MAGIC: &[u8; 4] = b"LGJ1";
const HEAD: usize = 4 + 8 + 8 + 4 + 4;
/// The largest payload replay accepts; larger is damage. A batch of the committer's
/// `MAX_BATCH` (4,096) changes with 1 KiB owners and labels stays far below it.
const MAX_PAYLOAD: usize = 64 << 20;
/// Checkpoint once this many changes wait in the journal.
pub const CHECKPOINT_OPS: usize = 1024;
/// ... or once the journal is this long (owners and labels make records longer).
pub const CHECKPOINT_BYTES: u64 = 1 << 20;

/// What the store file already has of the journal, kept in the store file itself (in the
/// same transaction as each checkpoint): every record of an older generation, and the
/// records of `generation` numbered below `applied`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    pub generation: u64,
    pub applied: u64,
}

impl Mark {
    fn has(&self, generation: u64, number: u64) -> bool {
        generation < self.generation || (generation == self.generation && number < self.applied)
    }
}

/// Why a journal cannot be replayed: a record that passed its CRC but is not one labgate
/// wrote.
#[derive(Debug, thiserror::Error)]
#[error("journal record {number} at byte {offset}: {why}")]
pub struct Undecodable {
    number: u64,
    offset: u64,
    why: &'static str,
}

pub struct Journal {
    file: File,
    /// Where the next record goes: the end of the last whole record.
    len: u64,
    /// This life's generation, and the next record's number in it.
    generation: u64,
    next: u64,
    /// Kept between appends: a record is encoded here.
    buf: Vec<u8>,
}

/// What [`Journal::open`] read back.
pub struct Replay {
    pub journal: Journal,
    /// The changes of every whole record the store does not have, in order.
    pub ops: Vec<Op>,
    /// Whether replay stopped at a record that was due next but is damaged or cut short
    /// (an append that never finished), rather than at zeros or an older record.
    pub cut_off: bool,
}

impl Journal {
    /// Reads `file` back: the changes of the records the store does not have (`mark`),
    /// and a journal for the next generation, appended from its start. Its records stay
    /// until then: the caller must checkpoint the changes returned, with the new
    /// generation's mark, and [`Journal::clear`] it, before appending anything.
    pub fn open(file: File, mark: Mark) -> io::Result<Result<Replay, Undecodable>> {
        let size = file.metadata()?.len();
        let mut ops = Vec::new();
        let mut offset = 0u64;
        // The generation and number the next record must have.
        let mut expected: Option<(u64, u64)> = None;
        let mut cut_off = false;
        let mut newest = mark.generation;
        let mut head = [0u8; HEAD];
        let mut payload = Vec::new();
        while offset + HEAD as u64 <= size {
            file.read_exact_at(&mut head, offset)?;
            let field = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8"));
            let (generation, number) = (field(4), field(12));
            let len = u32::from_le_bytes(head[20..24].try_into().expect("4")) as usize;
            let crc = u32::from_le_bytes(head[24..28].try_into().expect("4"));
            if &head[..4] != MAGIC || expected.is_some_and(|e| e != (generation, number)) {
                break;
            }
            let end = offset + (HEAD + len) as u64;
            if len > MAX_PAYLOAD || end > size {
                cut_off = true;
                break;
            }
            payload.resize(len, 0);
            file.read_exact_at(&mut payload, offset + HEAD as u64)?;
            if checksum(&head[4..24], &payload) != crc {
                cut_off = true;
                break;
            }
            // A record the store has is only a link in the chain: replaying it again
            // after a later one was lost would undo that one.
            let mut decoded = Vec::new();
            if let Err(why) = decode(&payload, &mut decoded) {
                return Ok(Err(Undecodable {
                    number,
                    offset,
                    why,
                }));
            }
            if !mark.has(generation, number) {
                ops.append(&mut decoded);
            }
            newest = newest.max(generation);
            offset = end;
            expected = Some((generation, number.wrapping_add(1)));
        }
        // Above every generation in the file or the store (a store restored from an
        // older copy may be behind its journal).
        let generation = newest.wrapping_add(1);
        Ok(Ok(Replay {
            journal: Journal {
                file,
                len: 0,
                generation,
                next: 0,
                buf: Vec::new(),
            },
            ops,
            cut_off,
        }))
    }

    /// Appends `ops` as one record and waits until it is on disk. On an error the file
    /// may end in part of a record: the caller must reopen (replay stops before it)
    /// rather than append after it.
    pub fn append(&mut self, ops: &[Op]) -> io::Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; HEAD]);
        for op in ops {
            encode(op, &mut self.buf);
        }
        let len = u32::try_from(self.buf.len() - HEAD)
            .ok()
            .filter(|l| *l as usize <= MAX_PAYLOAD)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "batch too large"))?;
        self.buf[..4].copy_from_slice(MAGIC);
        self.buf[4..12].copy_from_slice(&self.generation.to_le_bytes());
        self.buf[12..20].copy_from_slice(&self.next.to_le_bytes());
        self.buf[20..24].copy_from_slice(&len.to_le_bytes());
        let crc = checksum(&self.buf[4..24], &self.buf[HEAD..]);
        self.buf[24..28].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(&self.buf, self.len)?;
        self.file.sync_data()?;
        self.len += self.buf.len() as u64;
        self.next = self.next.wrapping_add(1);
        // A batch far above the usual does not keep its buffer.
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Empties the journal: its changes are in redb. Not synced: the next append's
    /// `fdatasync` records the new length; a crash before it replays records redb already
    /// has, which changes nothing, and should the disk lose the truncation, the records
    /// after the new ones are not their successors (the numbering goes on).
    pub fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        Ok(())
    }

    /// Makes the journal's length durable (after [`Journal::clear`] at open).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Bytes in the journal.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The mark that says the store has every record appended so far.
    pub fn mark(&self) -> Mark {
        Mark {
            generation: self.generation,
            applied: self.next,
        }
    }
}

fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

const INSERT: u8 = 1;
const LABEL: u8 = 2;
const REMOVE: u8 = 3;
const TOUCH: u8 = 4;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Owners and labels are bounded far below 4 GiB (identity and label limits).
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends one change to `out`.
fn encode(op: &Op, out: &mut Vec<u8>) {
    match op {
        Op::Insert(s, owner, next) => {
            out.push(INSERT);
            out.extend_from_slice(&s.seq.to_le_bytes());
            out.extend_from_slice(s.id.as_uuid().as_bytes());
            out.extend_from_slice(&s.created_ms.to_le_bytes());
            out.extend_from_slice(&next.to_le_bytes());
            match owner {
                Some(o) => {
                    out.push(1);
                    put_bytes(out, o.as_bytes());
                }
                None => out.push(0),
            }
        }
        Op::Label(seq, label) => {
            out.push(LABEL);
            out.extend_from_slice(&seq.to_le_bytes());
            let text = serde_json::to_string(label).unwrap_or_default();
            put_bytes(out, text.as_bytes());
        }
        Op::Remove(seq) => {
            out.push(REMOVE);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        Op::Touch(v) => {
            out.push(TOUCH);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// A cursor over a payload; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("a change is cut short");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4"));
        self.take(n as usize)
    }
    fn text(&mut self) -> Result<String, &'static str> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_string)
            .map_err(|_| "text that is not UTF-8")
    }
}

/// Decodes every change of one payload onto `ops`.
fn decode(payload: &[u8], ops: &mut Vec<Op>) -> Result<(), &'static str> {
    let mut r = Reader(payload);
    while !r.0.is_empty() {
        let op = match r.u8()? {
            INSERT => {
                let seq = r.u64()?;
                let id: [u8; 16] = r.take(16)?.try_into().expect("16");
                let created_ms = r.u64()?;
                let next = r.u64()?;
                let owner = match r.u8()? {
                    0 => None,
                    1 => Some(r.text()?),
                    _ => return Err("an owner flag that is neither 0 nor 1"),
                };
                let s = StoredSession {
                    id: SessionId::from_uuid(Uuid::from_bytes(id)),
                    seq,
                    created_ms,
                };
                Op::Insert(s, owner, next)
            }
            LABEL => {
                let seq = r.u64()?;
                let label: Label = serde_json::from_str(&r.text()?)
                    .map_err(|_| "a label that is not labgate's JSON")?;
                Op::Label(seq, label)
            }
            REMOVE => Op::Remove(r.u64()?),
            TOUCH => Op::Touch(r.u64()?),
            _ => return Err("an unknown kind of change"),
        };
        ops.push(op);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn file(path: &std::path::Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    fn replay(path: &std::path::Path) -> Replay {
        Journal::open(file(path), Mark::default()).unwrap().unwrap()
    }

    /// Every kind of change, with and without its optional parts.
    fn changes(seq: u64) -> Vec<Op> {
        let s = StoredSession {
            id: SessionId::random(),
            seq,
            created_ms: 1_700_000_000_000 + seq,
        };
        vec![
            Op::Insert(s, None, seq + 1),
            Op::Insert(
                StoredSession { seq: seq + 1, ..s },
                Some("alice@lab".to_string()),
                seq + 9,
            ),
            Op::Label(
                seq,
                Label {
                    owner: Some("ci \"nightly\" ü".to_string()),
                    note: None,
                },
            ),
            Op::Label(seq + 1, Label::default()),
            Op::Remove(seq),
            Op::Touch(u64::MAX),
        ]
    }

    /// Changes that are all the same size each time: records of equal length.
    fn create(seq: u64) -> Vec<Op> {
        let s = StoredSession {
            id: SessionId::random(),
            seq,
            created_ms: 1_700_000_000_000,
        };
        vec![Op::Insert(s, None, seq + 1)]
    }

    #[test]
    fn records_read_back_as_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = replay(&path).journal;
        let (a, b) = (changes(1), changes(10));
        j.append(&a).unwrap();
        j.append(&[]).unwrap();
        j.append(&b).unwrap();
        drop(j);
        let r = replay(&path);
        assert_eq!(r.ops, [a, b].concat());
        assert!(!r.cut_off);
        // A new generation, written from the start.
        assert_eq!((r.journal.len(), r.journal.next), (0, 0));
    }

    /// A journal of two records at `path`: the first's changes, where the second starts
    /// and ends, and the file's bytes.
    fn two_records(path: &std::path::Path) -> (Vec<Op>, usize, usize, Vec<u8>) {
        let mut j = replay(path).journal;
        let first = changes(1);
        j.append(&first).unwrap();
        let whole = j.len() as usize;
        j.append(&changes(20)).unwrap();
        let end = j.len() as usize;
        drop(j);
        (first, whole, end, std::fs::read(path).unwrap())
    }

    #[test]
    fn an_append_cut_off_anywhere_is_ignored_and_the_records_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (first, whole, end, bytes) = two_records(&path);
        for cut in whole..end {
            // The second record written up to `cut`, and nothing after it, or zeros
            // (a file system may show the new length before the data).
            for tail in [0, end - cut] {
                let mut torn = bytes[..cut].to_vec();
                torn.resize(cut + tail, 0);
                std::fs::write(&path, &torn).unwrap();
                let r = replay(&path);
                assert_eq!(r.ops, first, "cut at {cut}");
                // Reported once its whole header is there and says it was the next
                // record (bytes of the number that are zero anyway may make that true
                // sooner).
                let header = cut >= whole + HEAD || (tail > 0 && cut >= whole + 20);
                assert!(r.cut_off || !header, "cut at {cut}");
                assert!(!r.cut_off || cut > whole + 4, "cut at {cut}");
            }
        }
    }

    #[test]
    fn a_damaged_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (first, whole, end, bytes) = two_records(&path);
        // Any one byte of the second record flipped: its CRC (or magic, generation,
        // number, length) no longer holds.
        for at in whole..end {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            assert_eq!(replay(&path).ops, first, "byte {at} flipped");
        }
    }

    /// Records of equal size, so an old record sits exactly where the next new one
    /// would: replay must still stop there, or an old insert would come back after the
    /// removal that followed it.
    #[test]
    fn records_from_before_the_journal_was_emptied_are_never_replayed_after_newer_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        // Within one generation: emptied (a checkpoint), then one new record.
        let mut j = replay(&path).journal;
        j.append(&create(1)).unwrap();
        j.append(&create(2)).unwrap();
        j.clear().unwrap();
        let newer = create(3);
        j.append(&newer).unwrap();
        drop(j);
        // Its successor's place holds record 1 of this generation; the next is 3.
        let r = replay(&path);
        assert_eq!(r.ops, newer);
        assert!(!r.cut_off);
        // Across generations: the next life starts over at the start, numbered from 0.
        let mut j = r.journal;
        let newest = create(4);
        j.append(&newest).unwrap();
        drop(j);
        // Its successor's place holds the old generation's record 1.
        assert_eq!(replay(&path).ops, newest);
    }

    /// Records the store has (below its mark) are skipped but still links of the chain;
    /// generations only grow, above the mark's and the file's.
    #[test]
    fn records_the_store_has_are_skipped_and_generations_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let first = replay(&path).journal;
        assert_eq!(first.generation, 1);
        let mut j = first;
        let (a, b, c) = (create(1), create(2), create(3));
        for r in [&a, &b, &c] {
            j.append(r).unwrap();
        }
        drop(j);
        let store_has = |applied| Mark {
            generation: 1,
            applied,
        };
        let r = Journal::open(file(&path), store_has(2)).unwrap().unwrap();
        assert_eq!(r.ops, c);
        assert_eq!(r.journal.generation, 2);
        let r = Journal::open(file(&path), store_has(3)).unwrap().unwrap();
        assert!(r.ops.is_empty());
        // An older generation than the store's: all of it is in the store.
        let newer = Mark {
            generation: 7,
            applied: 0,
        };
        let r = Journal::open(file(&path), newer).unwrap().unwrap();
        assert!(r.ops.is_empty());
        assert_eq!(r.journal.generation, 8);
    }

    #[test]
    fn a_record_that_passes_its_crc_but_is_not_labgates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let payload = [9u8, 0, 0];
        let mut rec = MAGIC.to_vec();
        rec.extend_from_slice(&42u64.to_le_bytes());
        rec.extend_from_slice(&0u64.to_le_bytes());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = checksum(&rec[4..24], &payload);
        rec.extend_from_slice(&crc.to_le_bytes());
        rec.extend_from_slice(&payload);
        std::fs::write(&path, &rec).unwrap();
        let Err(e) = Journal::open(file(&path), Mark::default()).unwrap() else {
            panic!("an unknown change was replayed");
        };
        assert_eq!(
            e.to_string(),
            "journal record 0 at byte 0: an unknown kind of change"
        );
    }
}
