//! Segment files: `NNNNNNNNNNNNNNNNNNNN.seg` in the data directory, each starting with an
//! 8-byte magic and followed by framed records (see `record`), replayed in number order.
//!
//! Reading tells a crash from damage. A crash mid-write (kill -9, power loss) leaves at
//! most the end of the newest segment incomplete: a frame running past the end of the
//! file, or a bad checksum followed by nothing but zeros (file systems may extend a file
//! before its data lands). That tail was never confirmed to anyone, so it is cut off with a
//! warning. Any other bad frame means the disk or someone changed acknowledged data: the
//! broker refuses to start and says where, rather than silently dropping what follows.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::warn;

use super::StoreError;
use super::record::{FRAME_HEADER, MAX_PAYLOAD, Record};

/// First bytes of every segment: the format and its version.
pub const MAGIC: &[u8; 8] = b"SSAMQPL1";
const EXTENSION: &str = "seg";
/// Where a compacted segment is written before it is renamed into place.
const TEMP_EXTENSION: &str = "tmp";

/// Path of segment `number` in `dir`.
pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.{EXTENSION}"))
}

/// The segment numbers in `dir`, ascending. Leftover temporary files of an interrupted
/// compaction are removed: their segment never replaced anything.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let io = |e| StoreError::io(dir, e);
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let ext = path.extension().and_then(|e| e.to_str());
        if ext == Some(TEMP_EXTENSION) {
            fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
            continue;
        }
        let number = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok());
        if let (Some(EXTENSION), Some(n)) = (ext, number) {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Replays one segment through `apply` (record and framed size). The newest segment
/// (`newest`) may end in a torn record, which is truncated away; anywhere else a bad
/// frame is [`StoreError::Corrupt`]. Returns the segment's length after any truncation.
pub fn read_segment(
    path: &Path,
    newest: bool,
    mut apply: impl FnMut(Record, u64),
) -> Result<u64, StoreError> {
    let data = Bytes::from(fs::read(path).map_err(|e| StoreError::io(path, e))?);
    let corrupt = |offset: usize, reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if data.len() < MAGIC.len() {
        if newest && MAGIC.starts_with(&data) {
            // Created but its header never fully written: start it over.
            truncate(path, 0, "an incomplete segment header")?;
            return Ok(0);
        }
        return Err(corrupt(0, "too short for a segment header".into()));
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err(corrupt(0, "not a segment file of this format".into()));
    }
    let mut offset = MAGIC.len();
    while offset < data.len() {
        match frame_at(&data, offset) {
            Ok((payload, next)) => {
                let record = Record::decode(payload).map_err(|e| corrupt(offset, e.to_string()))?;
                apply(record, (next - offset) as u64);
                offset = next;
            }
            Err(Bad {
                torn_if_last,
                reason,
            }) => {
                if newest && torn_if_last {
                    truncate(path, offset as u64, &reason)?;
                    return Ok(offset as u64);
                }
                return Err(corrupt(offset, reason));
            }
        }
    }
    Ok(data.len() as u64)
}

/// A frame that does not check out, and whether it looks like a crash's torn tail.
struct Bad {
    torn_if_last: bool,
    reason: String,
}

/// The payload of the frame at `offset` and where the next frame starts.
fn frame_at(data: &Bytes, offset: usize) -> Result<(Bytes, usize), Bad> {
    let rest = &data[offset..];
    let zeros_from = |at: usize| data[at.min(data.len())..].iter().all(|b| *b == 0);
    if rest.len() < FRAME_HEADER {
        return Err(Bad {
            torn_if_last: true,
            reason: format!("{} bytes where a record header should be", rest.len()),
        });
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len > MAX_PAYLOAD {
        return Err(Bad {
            torn_if_last: zeros_from(offset + 4),
            reason: format!("record length {len} is impossible"),
        });
    }
    let end = offset + FRAME_HEADER + len;
    if end > data.len() {
        return Err(Bad {
            torn_if_last: true,
            reason: format!("record of {len} bytes runs past the end of the file"),
        });
    }
    let payload = data.slice(offset + FRAME_HEADER..end);
    if len == 0 || crc32fast::hash(&payload) != crc {
        return Err(Bad {
            torn_if_last: zeros_from(end) || (len == 0 && zeros_from(offset)),
            reason: "checksum mismatch".into(),
        });
    }
    Ok((payload, end))
}

fn truncate(path: &Path, len: u64, reason: &str) -> Result<(), StoreError> {
    warn!(
        "amqp store: {} ends in an incomplete record ({reason}), left by a crash before it was confirmed; truncating at byte {len}",
        path.display()
    );
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    file.set_len(len).map_err(|e| StoreError::io(path, e))?;
    file.sync_all().map_err(|e| StoreError::io(path, e))
}

/// Makes renames, creations and deletions in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// The segment being appended to.
#[derive(Debug)]
pub struct Appender {
    dir: PathBuf,
    number: u64,
    file: File,
    /// Bytes of the current segment known to be written.
    len: u64,
    /// Bytes of every segment, the current one included.
    pub total: u64,
}

impl Appender {
    /// Appends to segment `number` of length `len` (creating it when `len` is 0);
    /// `total` counts all segments.
    pub fn open(dir: &Path, number: u64, len: u64, total: u64) -> Result<Self, StoreError> {
        let path = segment_path(dir, number);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let mut len = len;
        let mut total = total;
        if len == 0 {
            file.write_all(MAGIC)
                .and_then(|()| file.sync_all())
                .map_err(|e| StoreError::io(&path, e))?;
            sync_dir(dir)?;
            len = MAGIC.len() as u64;
            total += len;
        }
        Ok(Appender {
            dir: dir.to_path_buf(),
            number,
            file,
            len,
            total,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Writes `bytes` and waits until they are on disk. On failure the segment is cut
    /// back to its last complete record so a retry does not leave a torn one behind.
    pub fn write_durably(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let path = segment_path(&self.dir, self.number);
        let written = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(StoreError::io(&path, e));
        }
        self.len += bytes.len() as u64;
        self.total += bytes.len() as u64;
        Ok(())
    }

    /// Continues in a new, empty segment.
    pub fn rotate(&mut self) -> Result<(), StoreError> {
        *self = Appender::open(&self.dir, self.number + 1, 0, self.total)?;
        Ok(())
    }

    /// Replaces every segment with one holding `records` (which start with a snapshot):
    /// written under a temporary name, synced, renamed into place, and only then the old
    /// segments deleted, so a crash at any point recovers the same state.
    pub fn compact(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let number = self.number + 1;
        let target = segment_path(&self.dir, number);
        let temp = target.with_extension(TEMP_EXTENSION);
        let mut bytes = MAGIC.to_vec();
        for r in records {
            r.encode(&mut bytes);
        }
        let mut file = File::create(&temp).map_err(|e| StoreError::io(&temp, e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| StoreError::io(&temp, e))?;
        drop(file);
        fs::rename(&temp, &target).map_err(|e| StoreError::io(&target, e))?;
        let len = bytes.len() as u64;
        match sync_dir(&self.dir).and_then(|()| Appender::open(&self.dir, number, len, len)) {
            Ok(next) => *self = next,
            Err(e) => {
                // Records appended to the old segment would be overridden by this one on
                // recovery: take it back and go on as before.
                let _ = fs::remove_file(&target);
                return Err(e);
            }
        }
        // From here on the old segments are superseded; deleting them only saves space.
        for old in list_segments(&self.dir)?
            .into_iter()
            .filter(|n| *n < number)
        {
            let path = segment_path(&self.dir, old);
            fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        }
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn queue(name: &str) -> Record {
        Record::DeclareQueue {
            name: Arc::from(name),
            auto_delete: false,
            arguments: Default::default(),
        }
    }

    fn write(dir: &Path, records: &[Record]) -> PathBuf {
        let mut bytes = MAGIC.to_vec();
        for r in records {
            r.encode(&mut bytes);
        }
        let path = segment_path(dir, 1);
        fs::write(&path, bytes).expect("write");
        path
    }

    fn read(path: &Path, newest: bool) -> Result<Vec<Record>, StoreError> {
        let mut got = Vec::new();
        read_segment(path, newest, |r, _| got.push(r))?;
        Ok(got)
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_good_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records: Vec<Record> = (0..3).map(|i| queue(&format!("q{i}"))).collect();
        let path = write(dir.path(), &records);
        let full = fs::metadata(&path).expect("meta").len();
        let cut = full - 3;
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(cut))
            .expect("cut");
        assert_eq!(read(&path, true).expect("recovers"), records[..2]);
        let good = fs::metadata(&path).expect("meta").len();
        assert!(good < cut, "truncated back to the last whole record");
        assert_eq!(read(&path, true).expect("again"), records[..2]);

        // A tail of zeros (the file grew before its data landed) is torn too.
        let mut bytes = fs::read(&path).expect("read");
        bytes.extend_from_slice(&[0; 40]);
        fs::write(&path, bytes).expect("write");
        assert_eq!(read(&path, true).expect("zeros"), records[..2]);
    }

    #[test]
    fn damage_in_the_middle_is_an_error_naming_file_and_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records: Vec<Record> = (0..3).map(|i| queue(&format!("queue-{i}"))).collect();
        let path = write(dir.path(), &records);
        let mut bytes = fs::read(&path).expect("read");
        let second = {
            let mut first = Vec::new();
            records[0].encode(&mut first);
            MAGIC.len() + first.len()
        };
        bytes[second + FRAME_HEADER + 3] ^= 0x40;
        fs::write(&path, &bytes).expect("write");
        let err = read(&path, true).expect_err("corrupt");
        assert!(
            matches!(&err, StoreError::Corrupt { offset, .. } if *offset == second as u64),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert_eq!(
            fs::read(&path).expect("read").len(),
            bytes.len(),
            "untouched"
        );

        // An older segment is never cut, even at its end.
        let path = write(dir.path(), &records);
        let len = fs::metadata(&path).expect("meta").len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(len - 1))
            .expect("cut");
        assert!(matches!(
            read(&path, false),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn compaction_replaces_every_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Appender::open(dir.path(), 1, 0, 0).expect("open");
        let mut bytes = Vec::new();
        queue("old").encode(&mut bytes);
        log.write_durably(&bytes).expect("write");
        log.rotate().expect("rotate");
        log.write_durably(&bytes).expect("write");
        assert_eq!(list_segments(dir.path()).expect("list"), vec![1, 2]);
        log.compact(&[Record::Snapshot, queue("live")])
            .expect("compact");
        assert_eq!(list_segments(dir.path()).expect("list"), vec![3]);
        let got = read(&segment_path(dir.path(), 3), true).expect("read");
        assert_eq!(got, vec![Record::Snapshot, queue("live")]);
        assert_eq!(log.total, log.len());
    }
}
