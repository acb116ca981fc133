//! What a start finds in the journal: every run's last seq and status, torn
//! tails cut off, and runs that were active when the daemon died closed as
//! `lost`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::history::line_timestamp;
use super::layout::{EVENTS_FILE, META_FILE};
use super::{Journal, JournalError, RunMeta, RunWriter, io_err};
use crate::event::{Event, Payload, RunStatus, StatusChange};
use crate::run_id::RunId;

/// How far back from the end recovery looks for the last complete line.
/// One event is at most ~90 KiB (64 KiB of output as base64 plus envelope).
const TAIL_SCAN: u64 = 512 * 1024;

/// What recovery learned about one run from its files.
#[derive(Clone, Debug)]
pub struct RecoveredRun {
    pub run_id: RunId,
    pub meta: RunMeta,
    pub last_seq: u64,
    pub status: RunStatus,
    pub last_status: StatusChange,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub bytes: u64,
}

impl Journal {
    /// Scans every run, cuts torn tails, and closes runs that were active
    /// when the previous daemon died as `lost`.
    pub fn recover(&self) -> Result<Vec<RecoveredRun>, JournalError> {
        self.scan(true)
    }

    /// Like `recover`, but leaves unfinished runs open: the gateway's copy of
    /// a host's run is only finished when the host says so.
    pub fn scan_open(&self) -> Result<Vec<RecoveredRun>, JournalError> {
        self.scan(false)
    }

    fn scan(&self, close_active: bool) -> Result<Vec<RecoveredRun>, JournalError> {
        let mut runs = Vec::new();
        let entries = fs::read_dir(&*self.root).map_err(io_err("read journal dir", &self.root))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read journal dir", &self.root))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|s| RunId::parse(s).ok()) else {
                tracing::warn!(entry = ?name, "ignoring unexpected entry in journal dir");
                continue;
            };
            match self.recover_run(&id, close_active) {
                Ok(Some(run)) => runs.push(run),
                Ok(None) => {}
                Err(error) => tracing::error!(run_id = %id, %error, "cannot recover run; leaving it alone"),
            }
        }
        runs.sort_by(|a, b| a.meta.created_at.cmp(&b.meta.created_at));
        Ok(runs)
    }

    fn recover_run(&self, id: &RunId, close_active: bool) -> Result<Option<RecoveredRun>, JournalError> {
        let dir = self.run_dir(id);
        let meta_path = dir.join(META_FILE);
        let meta_bytes = match fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Launch crashed before meta was written: nothing was ever visible.
                let _ = fs::remove_dir_all(&dir);
                return Ok(None);
            }
            Err(e) => return Err(io_err("read run meta", &meta_path)(e)),
        };
        let meta: RunMeta = serde_json::from_slice(&meta_bytes)
            .map_err(|e| JournalError::Corrupt { path: meta_path.clone(), why: e.to_string() })?;
        let events_path = dir.join(EVENTS_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&events_path)
            .map_err(io_err("open journal", &events_path))?;
        let len = file.metadata().map_err(io_err("stat journal", &events_path))?.len();
        let tail_start = len.saturating_sub(TAIL_SCAN);
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(tail_start)).map_err(io_err("read journal", &events_path))?;
        file.read_to_end(&mut tail).map_err(io_err("read journal", &events_path))?;
        let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < tail.len() {
            let keep = tail_start + complete as u64;
            tracing::warn!(run_id = %id, cut = len - keep, "cutting torn journal tail");
            file.set_len(keep).map_err(io_err("truncate journal", &events_path))?;
            tail.truncate(complete);
        }
        let last_line = tail[..complete.saturating_sub(1)].rsplit(|&b| b == b'\n').next().filter(|l| !l.is_empty());
        let last: Option<Event> = match last_line {
            Some(line) => Some(
                serde_json::from_slice(line)
                    .map_err(|e| JournalError::Corrupt { path: events_path.clone(), why: format!("last line: {e}") })?,
            ),
            None => None,
        };
        let head = read_head_events(&events_path)?;
        let started = head.iter().find(|e| e.status() == Some(RunStatus::Running));
        let mut run = RecoveredRun {
            run_id: id.clone(),
            meta,
            last_seq: last.as_ref().map_or(0, |e| e.seq),
            status: RunStatus::Queued,
            last_status: StatusChange::default(),
            started_at: started.map(|e| e.timestamp.clone()),
            ended_at: None,
            bytes: len + meta_bytes.len() as u64,
        };
        if started.is_some() {
            run.status = RunStatus::Running;
        }
        if let Some(ev) = &last
            && let Some(status) = ev.status()
            && status.is_final()
        {
            run.status = status;
            run.ended_at = Some(ev.timestamp.clone());
            run.last_status = StatusChange {
                status: Some(status),
                exit_code: ev.exit_code,
                signal: ev.signal,
                reason: ev.reason.clone(),
                pid: ev.pid,
            };
            return Ok(Some(run));
        }
        if !close_active {
            return Ok(Some(run));
        }
        // Active when the last daemon died: close it so nobody waits forever.
        drop(file);
        let file = OpenOptions::new().append(true).open(&events_path).map_err(io_err("open journal", &events_path))?;
        let mut writer = RunWriter::new(self, id.clone(), events_path, file, run.last_seq);
        let change = StatusChange {
            status: Some(RunStatus::Lost),
            reason: Some("the daemon stopped while the run was active".into()),
            ..StatusChange::default()
        };
        writer.append(Payload::Status(change.clone()));
        let batch = writer.finish_batch(true);
        writer.sync_now();
        run.last_seq = writer.last_seq();
        run.status = RunStatus::Lost;
        // The `lost` event's own timestamp (nothing reads this batch otherwise).
        run.ended_at = batch.frames.last().and_then(|f| line_timestamp(f.bytes()));
        run.last_status = change;
        tracing::warn!(run_id = %id, last_seq = run.last_seq, "run was active when the daemon died; marked lost");
        Ok(Some(run))
    }
}

/// The first few events (queued, running) to learn when a run started.
fn read_head_events(path: &Path) -> Result<Vec<Event>, JournalError> {
    let mut file = File::open(path).map_err(io_err("open journal", path))?;
    let mut head = vec![0u8; 4096];
    let n = file.read(&mut head).map_err(io_err("read journal", path))?;
    head.truncate(n);
    Ok(head.split(|&b| b == b'\n').take(3).filter_map(|l| serde_json::from_slice(l).ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{meta, out};
    use super::*;
    use std::io::Write;

    #[test]
    fn recovery_cuts_torn_tail_and_marks_lost() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let id = RunId::parse("r2").unwrap();
        let mut w = j.create_run(&id, &meta()).unwrap();
        w.append(Payload::Status(StatusChange { status: Some(RunStatus::Running), ..Default::default() }));
        w.append(out("hello\n"));
        w.finish_batch(false);
        drop(w);
        let path = dir.path().join("runs/r2/events.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"runId":"r2","seq":3,"ty"#).unwrap();
        let runs = j.recover().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, RunStatus::Lost);
        assert_eq!(runs[0].last_seq, 3);
        assert!(runs[0].started_at.is_some());
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<Event> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(lines[2].status(), Some(RunStatus::Lost));
        // A second recovery changes nothing.
        let again = j.recover().unwrap();
        assert_eq!(again[0].last_seq, 3);
        assert_eq!(again[0].status, RunStatus::Lost);
    }
}
