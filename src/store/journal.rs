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
//! Safe to replay twice: every change is idempotent (an insert or a label writes a value
//! by key, a removal removes by key, the counter floor only rises), so a crash between a
//! checkpoint and the journal's truncation replays changes redb already has, to the same
//! result. Order is kept: one thread appends, and replay applies records in file order,
//! only while their numbers follow one another.
//!
//! Framing, each record: `LGJ1`, its number (u64), the payload's length (u32), a CRC-32 of
//! number, length and payload (u32), the payload (the changes, [`encode`]). Replay stops at
//! the first record that is incomplete, fails its CRC or is out of sequence: that is where
//! the last append was cut off (its commit was never acknowledged). A record that passes
//! its CRC but does not decode was written by another program or version, and start-up
//! refuses it rather than guess.
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
const HEAD: usize = 4 + 8 + 4 + 4;
/// The largest payload replay accepts; larger is damage. A batch of the committer's
/// `MAX_BATCH` (4,096) changes with 1 KiB owners and labels stays far below it.
const MAX_PAYLOAD: usize = 64 << 20;
/// Checkpoint once this many changes wait in the journal.
pub const CHECKPOINT_OPS: usize = 1024;
/// ... or once the journal is this long (owners and labels make records longer).
pub const CHECKPOINT_BYTES: u64 = 1 << 20;

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
    /// The next record's number.
    next: u64,
    /// Kept between appends: a record is encoded here.
    buf: Vec<u8>,
}

/// What [`Journal::open`] read back.
pub struct Replay {
    pub journal: Journal,
    /// The changes of every whole record, in order.
    pub ops: Vec<Op>,
    /// Bytes after the last whole record (an append that was cut off), ignored.
    pub ignored: u64,
}

impl Journal {
    /// Reads `file` back. The journal is left as it was; [`Journal::clear`] it once its
    /// changes are in redb.
    pub fn open(file: File) -> io::Result<Result<Replay, Undecodable>> {
        let size = file.metadata()?.len();
        let mut ops = Vec::new();
        let (mut offset, mut expected) = (0u64, None::<u64>);
        let mut head = [0u8; HEAD];
        let mut payload = Vec::new();
        while offset + HEAD as u64 <= size {
            file.read_exact_at(&mut head, offset)?;
            let number = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
            let end = offset + (HEAD + len) as u64;
            if &head[..4] != MAGIC
                || len > MAX_PAYLOAD
                || end > size
                || expected.is_some_and(|n| n != number)
            {
                break;
            }
            payload.resize(len, 0);
            file.read_exact_at(&mut payload, offset + HEAD as u64)?;
            if checksum(&head[4..16], &payload) != crc {
                break;
            }
            if let Err(why) = decode(&payload, &mut ops) {
                return Ok(Err(Undecodable {
                    number,
                    offset,
                    why,
                }));
            }
            offset = end;
            expected = Some(number.wrapping_add(1));
        }
        Ok(Ok(Replay {
            journal: Journal {
                file,
                len: offset,
                next: expected.unwrap_or(0),
                buf: Vec::new(),
            },
            ops,
            ignored: size - offset,
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
        self.buf[4..12].copy_from_slice(&self.next.to_le_bytes());
        self.buf[12..16].copy_from_slice(&len.to_le_bytes());
        let crc = checksum(&self.buf[4..16], &self.buf[HEAD..]);
        self.buf[16..20].copy_from_slice(&crc.to_le_bytes());
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

    /// Empties the journal, durably: its changes are in redb. The numbering goes on, so
    /// a record left behind by a truncation the disk lost is out of sequence.
    pub fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.len = 0;
        Ok(())
    }

    /// Bytes in the journal.
    pub fn len(&self) -> u64 {
        self.len
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
        Journal::open(file(path)).unwrap().unwrap()
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

    #[test]
    fn records_read_back_as_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = replay(&path).journal;
        let (a, b) = (changes(1), changes(10));
        j.append(&a).unwrap();
        j.append(&[]).unwrap();
        j.append(&b).unwrap();
        let len = j.len();
        drop(j);
        let r = replay(&path);
        assert_eq!(r.ops, [a, b].concat());
        assert_eq!((r.ignored, r.journal.len()), (0, len));
        // Appends go on after the last record, numbered on.
        assert_eq!(r.journal.next, 3);
    }

    #[test]
    fn an_append_cut_off_anywhere_is_ignored_and_the_records_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = replay(&path).journal;
        let first = changes(1);
        j.append(&first).unwrap();
        let whole = j.len();
        j.append(&changes(20)).unwrap();
        let end = j.len();
        drop(j);
        let bytes = std::fs::read(&path).unwrap();
        for cut in whole..end {
            std::fs::write(&path, &bytes[..cut as usize]).unwrap();
            let r = replay(&path);
            assert_eq!(r.ops, first, "cut at {cut}");
            assert_eq!((r.journal.len(), r.ignored), (whole, cut - whole));
        }
    }

    #[test]
    fn a_damaged_or_out_of_sequence_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = replay(&path).journal;
        let first = changes(1);
        j.append(&first).unwrap();
        let whole = j.len() as usize;
        j.append(&changes(20)).unwrap();
        drop(j);
        let bytes = std::fs::read(&path).unwrap();
        // Any one byte of the second record flipped: its CRC (or magic, length, number)
        // no longer holds.
        for at in whole..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            assert_eq!(replay(&path).ops, first, "byte {at} flipped");
        }
        // A record from before a truncation the disk lost: whole and valid, but its
        // number does not follow.
        let mut stale = bytes[..whole].to_vec();
        stale.extend_from_slice(&bytes[..whole]);
        std::fs::write(&path, &stale).unwrap();
        let r = replay(&path);
        assert_eq!(r.ops, first);
        assert_eq!(r.ignored, whole as u64);
    }

    #[test]
    fn a_record_that_passes_its_crc_but_is_not_labgates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let payload = [9u8, 0, 0];
        let mut rec = MAGIC.to_vec();
        rec.extend_from_slice(&0u64.to_le_bytes());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = checksum(&rec[4..16], &payload);
        rec.extend_from_slice(&crc.to_le_bytes());
        rec.extend_from_slice(&payload);
        std::fs::write(&path, &rec).unwrap();
        let Err(e) = Journal::open(file(&path)).unwrap() else {
            panic!("an unknown change was replayed");
        };
        assert_eq!(
            e.to_string(),
            "journal record 0 at byte 0: an unknown kind of change"
        );
    }

    #[test]
    fn clearing_empties_the_file_and_numbering_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = replay(&path).journal;
        j.append(&changes(1)).unwrap();
        j.clear().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let later = changes(5);
        j.append(&later).unwrap();
        assert_eq!(j.next, 2);
        drop(j);
        assert_eq!(replay(&path).ops, later);
    }
}
