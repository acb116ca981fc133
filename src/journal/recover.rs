//! What a start finds in the journal: every run's last seq, status and
//! health; torn tails cut off; runs that were active when the daemon died
//! closed as `lost`.
//!
//! Nothing with events is ever deleted here: a damaged run stays visible
//! and degraded, with what is missing rebuilt from what is left (a lost
//! `meta.json` from the events, a lost final status from the state record).
//! Only a launch that provably never started (no meta, no events, nothing
//! recorded) is removed, and the removal is logged.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::layout::{EVENTS_FILE, META_FILE};
use super::lines::{event_seq, line_seq, line_timestamp};
use super::state::{Health, RunState};
use super::{Journal, JournalError, RunMeta, RunWriter, WriterLock, io_err};
use crate::event::{Batch, Event, Payload, RunStatus, StatusChange};
use crate::run_id::RunId;

/// How far back from the end recovery looks for the last intact line.
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
    pub journal: Health,
    /// The highest seq the events file itself holds (`last_seq` may be
    /// higher: seqs handed out live that the file did not keep). A copy
    /// that is resent what it lacks (the gateway) resumes after this.
    pub file_seq: u64,
    /// Where the file's last complete line ends: where a reader of new
    /// events starts.
    pub offset: u64,
    /// The job's pid (and process group), from its `running` event.
    pub pid: Option<u32>,
    /// Its writer (the run's supervisor) holds the journal: the run goes
    /// on, and its file was read, not cut or closed.
    pub supervised: bool,
}

/// The end of an events file, after its torn tail (if any) was cut.
struct Tail {
    /// The last intact event.
    last: Option<Event>,
    /// The highest seq any line shows, damaged ones included.
    max_seq: u64,
    /// The very last line is damaged.
    damaged_last: bool,
    len: u64,
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
                Err(error) => self.quarantine(&id, &error),
            }
        }
        runs.sort_by(|a, b| a.meta.created_at.cmp(&b.meta.created_at));
        Ok(runs)
    }

    fn recover_run(&self, id: &RunId, close_active: bool) -> Result<Option<RecoveredRun>, JournalError> {
        let dir = self.run_dir(id);
        let events_path = dir.join(EVENTS_FILE);
        let meta_path = dir.join(META_FILE);
        // Held for the whole recovery: nobody starts writing under us.
        let lock = self.try_writer_lock(id)?;
        let supervised = matches!(lock, WriterLock::Held);
        let record = RunState::read(&self.state_path(id));
        let tail = read_tail(id, &events_path, !supervised)?;
        let mut damage: Vec<&'static str> = Vec::new();
        let meta = match fs::read(&meta_path) {
            Ok(bytes) => match serde_json::from_slice::<RunMeta>(&bytes) {
                Ok(meta) => Some(meta),
                Err(_) => {
                    damage.push("meta.json is not valid");
                    None
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(_) => {
                damage.push("meta.json cannot be read");
                None
            }
        };
        let has_events = tail.as_ref().is_some_and(|t| t.len > 0);
        if !supervised
            && meta.is_none()
            && damage.is_empty()
            && !has_events
            && record.as_ref().is_none_or(|r| r.last_seq == 0)
        {
            // No meta, no events, nothing recorded: a launch that crashed
            // before the run existed. Nobody ever saw it.
            tracing::warn!(run_id = %id, path = %dir.display(), "removing a launch that never started");
            fs::remove_dir_all(&dir).map_err(io_err("remove unstarted run", &dir))?;
            return Ok(None);
        }
        let head = if has_events { read_head_events(&events_path)? } else { Vec::new() };
        let meta = meta.unwrap_or_else(|| {
            if damage.is_empty() {
                damage.push("meta.json is missing");
            }
            rebuilt_meta(id, &head, &events_path)
        });
        match &tail {
            None => damage.push("events.jsonl is missing"),
            Some(t) if t.damaged_last => damage.push("its last line is damaged"),
            Some(_) => {}
        }
        let record = record.unwrap_or_default();
        let file_seq = tail.as_ref().map_or(0, |t| t.max_seq);
        let degraded = record.journal == Health::Degraded || !damage.is_empty();
        let started = head.iter().find(|e| e.status() == Some(RunStatus::Running));
        let mut run = RecoveredRun {
            run_id: id.clone(),
            meta,
            // Never below what the record says was handed out: those seqs
            // were seen live, whether or not the file kept them.
            last_seq: file_seq.max(record.last_seq),
            status: if started.is_some() { RunStatus::Running } else { RunStatus::Queued },
            last_status: StatusChange::default(),
            started_at: started.map(|e| e.timestamp.clone()),
            ended_at: None,
            journal: if degraded { Health::Degraded } else { Health::Ok },
            file_seq,
            offset: tail.as_ref().map_or(0, |t| t.len),
            pid: started.and_then(|e| e.pid),
            supervised,
        };
        if degraded {
            self.note_degraded(id, record.journal, &damage);
        }
        let last = tail.and_then(|t| t.last);
        let ended = last
            .as_ref()
            .and_then(|ev| {
                ev.status_change()
                    .filter(|c| c.status.is_some_and(RunStatus::is_final))
                    .map(|c| (c, ev.timestamp.clone()))
            })
            .or(record.ended);
        if let Some((change, at)) = ended {
            run.status = change.status.unwrap_or(RunStatus::Lost);
            run.ended_at = Some(at);
            run.last_status = change;
            return Ok(Some(run));
        }
        if !close_active || supervised {
            return Ok(Some(run));
        }
        self.close_lost(&mut run, "the daemon stopped while the run was active")?;
        drop(lock);
        Ok(Some(run))
    }

    /// A run whose files cannot even be read (an events file that is a
    /// directory, unreadable, an I/O error): moved whole to
    /// `<root>/../quarantine/<id>.<ulid>` for a person to look at, so the
    /// rest of the journal (and, at a gateway, the rest of the host's link)
    /// is not held up by it, and its ID can be used again. Nothing is deleted.
    fn quarantine(&self, id: &RunId, error: &JournalError) {
        let dir = self.run_dir(id);
        let quarantine = self.root.parent().unwrap_or(&self.root).join("quarantine");
        let to = quarantine.join(format!("{id}.{}", RunId::generate()));
        let moved = fs::create_dir_all(&quarantine).and_then(|()| fs::rename(&dir, &to));
        match moved {
            Ok(()) => {
                self.stats.quarantined.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.health.forget(id);
                tracing::error!(run_id = %id, %error, to = %to.display(),
                    "cannot recover run; moved it to quarantine (nothing deleted)");
            }
            Err(move_error) => tracing::error!(run_id = %id, %error, %move_error,
                "cannot recover run, nor move it to quarantine; leaving it alone"),
        }
    }

    /// Whether a directory for the run exists (with or without its files).
    pub fn run_dir_exists(&self, id: &RunId) -> bool {
        self.run_dir(id).exists()
    }

    /// Moves a run's directory to quarantine (see `quarantine`): the
    /// gateway, for files it could not make a run of.
    pub fn quarantine_run(&self, id: &RunId) {
        let error = JournalError::Io {
            what: "recover run",
            path: self.run_dir(id),
            error: io::Error::other("its files could not be read at start"),
        };
        self.quarantine(id, &error);
    }

    /// The files of one run as they are now (the gateway, after its
    /// journal of the run failed): last seq is what the file holds, torn
    /// tail cut. `None` if the run is gone.
    pub fn rescan_run(&self, id: &RunId) -> Result<Option<RecoveredRun>, JournalError> {
        match self.recover_run(id, false) {
            Ok(run) => Ok(run),
            Err(error) => {
                self.quarantine(id, &error);
                Ok(None)
            }
        }
    }

    /// Marks a run degraded at start, and makes its state record say so.
    fn note_degraded(&self, id: &RunId, recorded: Health, damage: &[&str]) {
        self.health.mark(id);
        if !damage.is_empty() {
            tracing::warn!(run_id = %id, damage = ?damage, "damaged run files; the run is kept, degraded");
        }
        if recorded != Health::Degraded {
            let path = self.state_path(id);
            let mut state = RunState::read(&path).unwrap_or_default();
            state.journal = Health::Degraded;
            if let Some(file) = RunState::open(&path)
                && let Err(error) = state.write_to(&file)
            {
                tracing::error!(run_id = %id, %error, "cannot record the damage in the run's state record");
            }
        }
    }

    /// Closes a run nobody will finish (its writer is gone) as `lost`, so
    /// nobody waits for it forever. Call it only while the writer lock is
    /// free; `reason` says why the run was lost.
    pub fn close_lost(&self, run: &mut RecoveredRun, reason: &str) -> Result<Batch, JournalError> {
        let change =
            StatusChange { status: Some(RunStatus::Lost), reason: Some(reason.into()), ..StatusChange::default() };
        self.close_run(run, change)
    }

    /// Appends a final status to a run whose writer is gone, syncs it, and
    /// returns the batch for whoever publishes the run.
    pub fn close_run(&self, run: &mut RecoveredRun, change: StatusChange) -> Result<Batch, JournalError> {
        let events_path = self.run_dir(&run.run_id).join(EVENTS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&events_path)
            .map_err(io_err("open journal", &events_path))?;
        let mut writer = RunWriter::new(self, run.run_id.clone(), events_path, file, run.last_seq);
        writer.append(Payload::Status(change.clone()));
        let batch = writer.finish_batch(true);
        writer.sync_now();
        run.last_seq = writer.last_seq();
        run.status = change.status.unwrap_or(RunStatus::Lost);
        run.ended_at = batch.frames.last().and_then(|f| line_timestamp(f.bytes()));
        tracing::warn!(run_id = %run.run_id, last_seq = run.last_seq, status = ?run.status,
            reason = change.reason.as_deref().unwrap_or_default(), "closed a run whose supervisor is gone");
        run.last_status = change;
        Ok(batch)
    }
}

/// Cuts a torn tail (a last line without its newline: a write the crash
/// interrupted, never published) and finds the last intact event. `None`
/// if there is no events file. With `cut` false (the file has a live
/// writer, whose last line may be half-written now) nothing is cut.
fn read_tail(id: &RunId, path: &Path, cut: bool) -> Result<Option<Tail>, JournalError> {
    let mut file = match OpenOptions::new().read(true).write(cut).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open journal", path)(e)),
    };
    let len = file.metadata().map_err(io_err("stat journal", path))?.len();
    let tail_start = len.saturating_sub(TAIL_SCAN);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(tail_start)).map_err(io_err("read journal", path))?;
    file.read_to_end(&mut tail).map_err(io_err("read journal", path))?;
    let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut len = len;
    if complete < tail.len() && !cut {
        tail.truncate(complete);
        len = tail_start + complete as u64;
    } else if complete < tail.len() {
        let keep = tail_start + complete as u64;
        tracing::warn!(run_id = %id, cut = len - keep, "cutting torn journal tail");
        file.set_len(keep).map_err(io_err("truncate journal", path))?;
        tail.truncate(complete);
        len = keep;
    }
    let mut lines = tail[..complete.saturating_sub(1)].rsplit(|&b| b == b'\n');
    let mut out = Tail { last: None, max_seq: 0, damaged_last: false, len };
    let mut first = true;
    // The window may start mid-line: the first line of a partial window is not judged.
    let whole_window = tail_start == 0;
    while let Some(line) = lines.next() {
        let partial = !whole_window && lines.clone().next().is_none();
        if line.is_empty() || partial {
            break;
        }
        if let Some(ev) = event_seq(line).and_then(|_| serde_json::from_slice::<Event>(line).ok()) {
            out.max_seq = out.max_seq.max(ev.seq);
            out.last = Some(ev);
            break;
        }
        out.damaged_last |= first;
        out.max_seq = out.max_seq.max(line_seq(line).unwrap_or(0));
        first = false;
    }
    Ok(Some(out))
}

/// A `meta.json` for a run that lost its own: everything but when it was
/// created is unknown (its first event says when).
fn rebuilt_meta(id: &RunId, head: &[Event], events_path: &Path) -> RunMeta {
    let created_at = head.first().map(|e| e.timestamp.clone()).unwrap_or_else(|| {
        fs::metadata(events_path)
            .and_then(|m| m.modified())
            .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_else(|_| crate::event::now_timestamp())
    });
    RunMeta { run_id: Some(id.clone()), command: Vec::new(), cwd: None, pty: false, created_at }
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
