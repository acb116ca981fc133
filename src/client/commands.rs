//! The four commands: `run`, `logs`, `cancel`, `ps`.

use std::io::Write;
use std::path::Path;

use super::follow::Subscription;
use super::{Client, ClientError, EXIT_RUNTAP_ERROR, Line, OutputSink, Streamed};
use crate::event::{Event, RunStatus};
use crate::protocol::unix::{LaunchRequest, Request, Response};
use crate::run_info::RunInfo;

/// Options of `runtap run`.
pub struct RunOptions {
    pub id: Option<String>,
    pub pty: bool,
    pub detach: bool,
    pub command: Vec<String>,
}

/// `runtap run`: launch, stream output, exit as the job did.
pub async fn run(socket: &Path, opts: RunOptions) -> Result<i32, ClientError> {
    let mut client = Client::connect(socket).await?;
    let size = crate::sys::terminal_size();
    let (cols, rows) = (size.map(|s| s.0), size.map(|s| s.1));
    let launch = LaunchRequest {
        run_id: opts.id,
        command: opts.command,
        env: std::env::vars().collect(),
        clear_env: true,
        cwd: std::env::current_dir().ok().map(|p| p.to_string_lossy().into_owned()),
        pty: opts.pty,
        cols,
        rows,
    };
    let run_id = match client.call(&Request::Launch(launch)).await? {
        Response::Launched { run_id } => run_id,
        other => return Err(ClientError::Protocol(format!("{other:?}"))),
    };
    if opts.detach {
        println!("{run_id}");
        return Ok(0);
    }
    let mut sub = Subscription::start(socket, client, &run_id, 0, true).await?;
    let mut interrupts = 0;
    let mut final_event: Option<Event> = None;
    let mut started = false;
    let mut sink = OutputSink::new();
    loop {
        let line = tokio::select! {
            line = sub.next(&mut sink) => line?,
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                sink.flush()?;
                if interrupts > 1 {
                    eprintln!("runtap: interrupted again; leaving run {run_id} to the daemon");
                    return Ok(130);
                }
                eprintln!("runtap: cancelling run {run_id} (Ctrl-C again to stop waiting)");
                sub.cancel("interrupted: SIGINT to runtap run".to_owned()).await?;
                continue;
            }
        };
        match line {
            Streamed::Output(_) => {}
            Streamed::Event(ev) => {
                started |= ev.status() == Some(RunStatus::Running);
                if ev.status().is_some_and(RunStatus::is_final) {
                    final_event = Some(*ev);
                }
            }
            Streamed::Control(Response::End { .. }) => break,
            Streamed::Control(Response::Error { code, message, .. }) if code != "finished" => {
                sink.flush()?;
                eprintln!("runtap: {message}");
            }
            Streamed::Control(_) => {}
        }
    }
    sink.flush()?;
    let Some(ev) = final_event else {
        return Err(ClientError::Protocol("stream ended without a final status".into()));
    };
    if ev.status() == Some(RunStatus::Lost) {
        eprintln!("runtap: run {run_id} was lost: {}", ev.reason.as_deref().unwrap_or("daemon stopped"));
        return Ok(EXIT_RUNTAP_ERROR);
    }
    // The job never started: its output cannot say why, so say it here.
    if ev.status() == Some(RunStatus::Failed) && ev.pid.is_none() && !started {
        eprintln!("runtap: {}", ev.reason.as_deref().unwrap_or("the command could not be started"));
    }
    Ok(exit_code(&ev))
}

/// The process exit code that mirrors how the run ended. A cancelled run
/// never reports success, even if the job caught SIGTERM and exited 0.
pub fn exit_code(ev: &Event) -> i32 {
    let cancelled = ev.status() == Some(RunStatus::Cancelled);
    match (ev.exit_code, ev.signal) {
        (_, Some(sig)) => 128 + sig,
        (Some(0), None) if cancelled => 130,
        (Some(code @ 0..=255), None) => code,
        (Some(_), None) => EXIT_RUNTAP_ERROR,
        (None, None) if ev.status() == Some(RunStatus::Succeeded) => 0,
        (None, None) if cancelled => 130,
        // Failed, and nobody could tell how (the supervisor lost track of
        // the job): runtap's own failure, as before.
        (None, None) => EXIT_RUNTAP_ERROR,
    }
}

/// `runtap logs`: print a run's output from its journal.
pub async fn logs(socket: &Path, id: &str, since: u64, follow: bool) -> Result<i32, ClientError> {
    let mut client = Client::connect(socket).await?;
    client.call(&Request::Status { run_id: id.to_owned() }).await?;
    let mut sub = Subscription::start(socket, client, id, since, follow).await?;
    let mut sink = OutputSink::new();
    loop {
        match sub.next(&mut sink).await? {
            Streamed::Output(_) | Streamed::Event(_) => {}
            Streamed::Control(Response::End { .. }) => {
                sink.flush()?;
                return Ok(0);
            }
            Streamed::Control(Response::Error { message, .. }) => {
                sink.flush()?;
                eprintln!("runtap: {message}");
            }
            Streamed::Control(_) => {}
        }
    }
}

/// `runtap cancel`.
pub async fn cancel(socket: &Path, id: &str, reason: Option<String>) -> Result<i32, ClientError> {
    let mut client = Client::connect(socket).await?;
    client.send(&Request::Cancel { run_id: id.to_owned(), reason }).await?;
    loop {
        match client.next().await? {
            Line::Control(Response::Cancelling { run }) => {
                println!("cancelling {} (was {})", run.run_id, run.status.as_str());
                return Ok(0);
            }
            Line::Control(Response::Error { code, message, .. }) => {
                eprintln!("runtap: {message}");
                return Ok(if code == "finished" { 0 } else { 1 });
            }
            _ => continue,
        }
    }
}

/// `runtap ps`.
pub async fn ps(socket: &Path, json: bool) -> Result<i32, ClientError> {
    let mut client = Client::connect(socket).await?;
    let runs = match client.call(&Request::List).await? {
        Response::Runs { runs } => runs,
        other => return Err(ClientError::Protocol(format!("{other:?}"))),
    };
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(&runs).map_err(|e| ClientError::Protocol(e.to_string()))?;
        writeln!(out, "{text}")?;
    } else {
        write!(out, "{}", ps_table(&runs, chrono::Utc::now()))?;
    }
    Ok(0)
}

/// The human table of `runtap ps`.
pub fn ps_table(runs: &[RunInfo], now: chrono::DateTime<chrono::Utc>) -> String {
    table(runs, None, now)
}

/// The table, with a HOST column first when the runs come from a gateway
/// (`hosts[i]` is the host of `runs[i]`).
pub(super) fn table(runs: &[RunInfo], hosts: Option<&[Option<String>]>, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut rows = vec![["ID", "STATUS", "EXIT", "STARTED", "DURATION", "COMMAND"].map(String::from).to_vec()];
    for r in runs {
        let exit = match (r.exit_code, r.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => crate::event::signal_name(s).unwrap_or_else(|| format!("signal {s}")),
            _ => "-".into(),
        };
        let parse = |t: &Option<String>| {
            t.as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
        };
        let started = parse(&r.started_at);
        let ended = parse(&r.ended_at);
        let started_s = started.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        let duration = match started {
            Some(s) => {
                let d = (ended.unwrap_or(now) - s).to_std().unwrap_or_default();
                humantime::format_duration(std::time::Duration::from_millis(d.as_millis() as u64)).to_string()
            }
            None => "-".into(),
        };
        let mut command = r.command.join(" ");
        if command.chars().count() > 60 {
            command = command.chars().take(57).collect::<String>() + "...";
        }
        rows.push(vec![r.run_id.to_string(), r.status.as_str().into(), exit, started_s, duration, command]);
    }
    if let Some(hosts) = hosts {
        let names = hosts.iter().map(|h| h.clone().unwrap_or_else(|| "-".into()));
        for (row, host) in rows.iter_mut().zip(std::iter::once("HOST".to_owned()).chain(names)) {
            row.insert(0, host);
        }
    }
    let columns = rows[0].len();
    let widths: Vec<usize> =
        (0..columns).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == columns - 1 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(data: &str, exit_code: Option<i32>, signal: Option<i32>) -> Event {
        serde_json::from_value(serde_json::json!({
            "runId": "r", "seq": 9, "type": "status", "data": data,
            "exitCode": exit_code, "signal": signal, "timestamp": "t"
        }))
        .unwrap()
    }

    #[test]
    fn exit_codes_mirror_the_run() {
        assert_eq!(exit_code(&status("succeeded", Some(0), None)), 0);
        assert_eq!(exit_code(&status("failed", Some(3), None)), 3);
        assert_eq!(exit_code(&status("failed", None, Some(9))), 137);
        assert_eq!(exit_code(&status("cancelled", None, Some(15))), 143);
        assert_eq!(exit_code(&status("cancelled", Some(0), None)), 130, "a cancelled run never reports success");
        assert_eq!(exit_code(&status("cancelled", None, None)), 130);
        assert_eq!(exit_code(&status("failed", Some(-1), None)), EXIT_RUNTAP_ERROR);
    }
}
