//! Issue 17.4: the fault-injection soak. A gateway and three host daemons,
//! each host's link through its own faulty proxy; a driver launching jobs
//! of every kind on random hosts while faults are injected at random
//! intervals (kill -9 of daemons and of the gateway, cut, refused and held
//! links, stalled, slow and malicious clients). Then the faults stop, every
//! link catches up, and the checker (tests/common/soak_check.rs) compares
//! every host journal with the gateway's copy, event by event, and bounds
//! fds, memory, zombies and open connections. docs/soak.md has the figures.
//!
//! `RUNTAP_SOAK_SECS` (default 60) sets how long faults are injected;
//! `RUNTAP_SOAK_SEED` replays a run's choices (the seed is printed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faulty_link::FaultyLink;
use common::hostile::{Malice, SlowRead, malicious, slow_reader, stalled};
use common::soak_check::{
    CopyTally, ProcFigures, compare_host, final_status, journal_lines_lenient, metric, proc_figures, run_ids,
    try_http_json,
};
use common::*;
use serde_json::Value;
use tokio::task::{JoinSet, block_in_place};

const DEFAULT_SECS: u64 = 60;
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// A process or link fault comes every 0.5 to 3 s.
const FAULT_GAP_MS: (u64, u64) = (500, 3000);
/// An unfriendly client comes every 0.2 to 1.5 s.
const CLIENT_GAP_MS: (u64, u64) = (200, 1500);
/// A job is launched every 50 to 250 ms.
const JOB_GAP_MS: (u64, u64) = (50, 250);
/// Bound on each wait of the end phase: runs finishing, links catching up,
/// connections closing. Reconnect backoff is at most 30 s; outages here
/// last at most 5 s, so a few attempts (0.5 + 1 + 2 + 4 s) cover them.
const SETTLE: Duration = Duration::from_secs(90);
/// Fds a process may hold at the end beyond its count at the start (a
/// journal file being closed, a pooled blocking thread's handle).
const FD_SLACK: usize = 8;
/// RSS a process may hold at the end: this, plus `RSS_PER_RUN_KIB` for each
/// run it holds. An idle daemon or gateway is about 20 MiB; what may grow
/// and shrink again is bounded: each subscriber's queue (8 MiB, freed with
/// it) and the allocator's retained pages. 64 MiB is far under what leaking
/// a run's output or the connections of a soak would reach.
const RSS_BASE_KIB: u64 = 64 * 1024;
/// Every run a process knows costs memory until retention deletes it (its
/// row, its hub topic): measured 5-6 KiB per run after 30 minutes (about
/// 2300 runs per host, 6900 at the gateway).
const RSS_PER_RUN_KIB: u64 = 8;

/// splitmix64: a seedable generator, so a seed replays the choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn ms(&mut self, bounds: (u64, u64)) -> Duration {
        Duration::from_millis(self.range(bounds))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Job {
    Fast,
    Slow,
    Binary,
    Pty,
    Cancelled,
    Failing,
}

impl Job {
    const ALL: [Job; 6] = [Job::Fast, Job::Slow, Job::Binary, Job::Pty, Job::Cancelled, Job::Failing];

    /// What follows `runtap run --detach --id ID`.
    fn args(self, rng: &mut Rng) -> Vec<String> {
        let script = match self {
            Job::Fast => format!("seq 1 {}", rng.range((1, 5000))),
            Job::Slow => format!("for i in $(seq 1 {}); do echo slow $i; sleep 0.1; done", rng.range((3, 30))),
            Job::Binary => format!("head -c {} /dev/urandom", rng.range((1, 100_000))),
            Job::Pty => format!("printf '\\033[1mpty\\033[0m\\r\\n'; seq 1 {}; stty size", rng.range((1, 500))),
            Job::Cancelled => "i=0; while true; do i=$((i+1)); echo waiting $i; sleep 0.2; done".to_owned(),
            Job::Failing => "echo about to fail; echo oops >&2; exit 3".to_owned(),
        };
        let pty = (self == Job::Pty).then(|| "--pty".to_owned());
        pty.into_iter().chain(["--".into(), "sh".into(), "-c".into(), script]).collect()
    }

    /// How it ends when no daemon is killed under it.
    fn expected(self) -> &'static str {
        match self {
            Job::Cancelled => "cancelled",
            Job::Failing => "failed",
            _ => "succeeded",
        }
    }
}

struct Host {
    name: &'static str,
    daemon: Daemon,
    link: Arc<FaultyLink>,
    /// When a killed daemon is to be restarted.
    down_until: Option<Instant>,
    at_start: ProcFigures,
}

/// Counts of every fault and client by kind, and of their outcomes.
#[derive(Default)]
struct Tally(BTreeMap<String, BTreeMap<String, u64>>);

impl Tally {
    fn add(&mut self, kind: impl Into<String>, outcome: impl Into<String>) {
        *self.0.entry(kind.into()).or_default().entry(outcome.into()).or_default() += 1;
    }
}

struct Soak {
    rng: Rng,
    gw: Gateway,
    gw_down_until: Option<Instant>,
    gw_at_start: ProcFigures,
    hosts: Vec<Host>,
    faults: Tally,
    /// Every run launched: (host index, run ID) -> kind.
    jobs: BTreeMap<(usize, String), Job>,
    /// Runs active when their daemon was killed: they outlive it (issue
    /// 15) and must end as their kind says all the same.
    crossed: Vec<(usize, String)>,
    /// Runs of the `Cancelled` kind not cancelled yet, and when to.
    to_cancel: Vec<(usize, String, Instant)>,
    /// Stalled and malicious clients: (kind, outcome).
    clients: JoinSet<(String, String)>,
    /// Slow readers: (target, what they read).
    slow: JoinSet<(String, SlowRead)>,
    slow_events: u64,
    /// Cancels sent through the gateway: (host, run, HTTP status, code).
    gw_cancels: JoinSet<(usize, String, u16, String)>,
    problems: Vec<String>,
}

impl Soak {
    async fn start(rng: Rng) -> Soak {
        let gw = Gateway::start();
        let mut hosts = Vec::new();
        for name in HOSTS {
            let link = Arc::new(FaultyLink::start(gw.addr.clone()).await);
            let mut daemon = gw.prepare_host(name);
            daemon.extra_args = upstream_args(&link.url(), name, &gw.agent_token_path());
            block_in_place(|| daemon.spawn());
            hosts.push(Host { name, daemon, link, down_until: None, at_start: ProcFigures::default() });
        }
        for h in &hosts {
            wait_connected(&gw, h.name, true).await;
        }
        for h in &mut hosts {
            h.at_start = proc_figures(h.daemon.pid());
        }
        let gw_at_start = proc_figures(gw.pid());
        Soak {
            rng,
            gw,
            gw_down_until: None,
            gw_at_start,
            hosts,
            faults: Tally::default(),
            jobs: BTreeMap::new(),
            crossed: Vec::new(),
            to_cancel: Vec::new(),
            clients: JoinSet::new(),
            slow: JoinSet::new(),
            slow_events: 0,
            gw_cancels: JoinSet::new(),
            problems: Vec::new(),
        }
    }

    fn up_hosts(&self) -> Vec<usize> {
        (0..self.hosts.len()).filter(|&i| self.hosts[i].down_until.is_none()).collect()
    }

    /// Restarts what is due to come back.
    fn revive(&mut self, now: Instant) {
        if self.gw_down_until.is_some_and(|t| t <= now) {
            block_in_place(|| self.gw.spawn());
            self.gw_down_until = None;
        }
        for h in &mut self.hosts {
            if h.down_until.is_some_and(|t| t <= now) {
                block_in_place(|| h.daemon.spawn());
                h.down_until = None;
            }
        }
    }

    fn launch(&mut self, n: usize) {
        let up = self.up_hosts();
        if up.is_empty() {
            return;
        }
        let host = up[self.rng.below(up.len() as u64) as usize];
        let job = Job::ALL[self.rng.below(Job::ALL.len() as u64) as usize];
        let id = format!("{job:?}-{n}").to_lowercase();
        let mut args = vec!["run".to_owned(), "--detach".into(), "--id".into(), id.clone()];
        args.extend(job.args(&mut self.rng));
        let d = &self.hosts[host].daemon;
        let out = block_in_place(|| d.run(&args.iter().map(String::as_str).collect::<Vec<_>>()));
        if !out.status.success() {
            self.problems.push(format!("launch {id} on {}: {out:?}", self.hosts[host].name));
            return;
        }
        if job == Job::Cancelled {
            let due = Instant::now() + self.rng.ms((200, 3000));
            self.to_cancel.push((host, id.clone(), due));
        }
        self.jobs.insert((host, id), job);
    }

    /// Cancels the runs that are due, by the socket or through the gateway.
    fn cancel_due(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) = self.to_cancel.drain(..).partition(|c| c.2 <= now);
        self.to_cancel = later;
        for (host, id, _) in due {
            let h = &self.hosts[host];
            if h.down_until.is_some() {
                self.to_cancel.push((host, id, now + Duration::from_secs(1)));
                continue;
            }
            if self.gw_down_until.is_none() && self.rng.below(2) == 0 {
                // Through the link, which may be held: up to cancel_timeout, so not in this loop.
                let (addr, token, name) = (self.gw.addr.clone(), self.gw.token(), h.name);
                let copy = self.gw.events_path(name, &id);
                self.gw_cancels.spawn(async move {
                    // Looked at first: the run may reach the gateway while it answers.
                    let forwarded = copy.exists();
                    let path = format!("/runs/{id}/cancel?host={name}");
                    let (status, body) = try_http_json(&addr, "POST", &path, &token).await;
                    let mut code = body["code"].as_str().unwrap_or("").to_owned();
                    if status == 404 {
                        // Fine while the run has not reached the gateway; not once it has.
                        code += if forwarded { " (RUN AT THE GATEWAY)" } else { " (run not forwarded yet)" };
                    }
                    (host, id, status, code)
                });
            } else {
                let out = block_in_place(|| h.daemon.run(&["cancel", &id]));
                self.faults.add("cancel via socket", cli_outcome(&out));
            }
        }
    }

    /// Counts what the clients and cancels that are done came to.
    fn collect(&mut self, now: Instant) {
        while let Some(done) = self.clients.try_join_next() {
            let (kind, outcome) = done.unwrap();
            self.client_done(kind, outcome);
        }
        while let Some(done) = self.slow.try_join_next() {
            let (target, read) = done.unwrap();
            self.slow_done(&target, read);
        }
        while let Some(done) = self.gw_cancels.try_join_next() {
            let (host, id, status, code) = done.unwrap();
            if code.contains("RUN AT THE GATEWAY") {
                self.problems.push(format!("cancel of {id} through the gateway: {status} {code}"));
            }
            self.faults.add("cancel via gateway", format!("{status} {code}"));
            if status != 200 {
                // Offline or timed out: the socket will do it.
                self.to_cancel.push((host, id, now + Duration::from_secs(1)));
            }
        }
    }

    fn client_done(&mut self, kind: String, outcome: String) {
        if outcome.starts_with("NOT") {
            self.problems.push(format!("{kind}: {outcome} within {:?}", common::hostile::HOSTILE_BOUND));
        }
        self.faults.add(kind, outcome);
    }

    fn slow_done(&mut self, target: &str, read: SlowRead) {
        self.faults.add("slow client", if target == "gateway" { "at the gateway" } else { "at a host" });
        self.slow_events += read.events;
        for v in read.violations {
            self.problems.push(format!("slow client at {target}: {v}"));
        }
    }

    /// One random fault of a process or a link.
    fn net_fault(&mut self) {
        let now = Instant::now();
        let host = self.rng.below(self.hosts.len() as u64) as usize;
        match self.rng.below(8) {
            0 | 1 if self.hosts[host].down_until.is_none() => {
                let h = &mut self.hosts[host];
                block_in_place(|| h.daemon.kill9());
                // What it was running goes on without it: no final status in its journal yet.
                let crossed: Vec<String> = run_ids(&h.daemon.state_dir())
                    .into_iter()
                    .filter(|r| {
                        let path = h.daemon.state_dir().join("runs").join(r).join("events.jsonl");
                        final_status(&journal_lines_lenient(&path)).is_none()
                    })
                    .collect();
                self.faults.add("kill -9 host", format!("restarted ({} runs going on)", bucket(crossed.len())));
                self.crossed.extend(crossed.into_iter().map(|r| (host, r)));
                h.down_until = Some(now + self.rng.ms((0, 2000)));
            }
            2 if self.gw_down_until.is_none() => {
                block_in_place(|| self.gw.kill9());
                self.faults.add("kill -9 gateway", "restarted on the same port");
                self.gw_down_until = Some(now + self.rng.ms((0, 3000)));
            }
            0..=4 => {
                self.hosts[host].link.cut();
                self.faults.add("link cut", "reconnected");
            }
            5 => self.timed_link("link refused 0.5-3 s", host, (500, 3000), FaultyLink::refuse),
            _ => self.timed_link("link held 1-5 s", host, (1000, 5000), FaultyLink::hold),
        }
    }

    /// One random unfriendly client, at a daemon or the gateway.
    fn client_fault(&mut self) {
        let (target, host, addr, token) = self.target();
        match self.rng.below(5) {
            0 => {
                let hold = self.rng.ms((2000, 20_000));
                let kind = format!("stalled client at {}", if host.is_some() { "a host" } else { "gateway" });
                self.clients.spawn(async move { (kind, stalled(&addr, &token, hold).await) });
            }
            1 => {
                let (pause, span) = (self.rng.ms((2, 15)), self.rng.ms((5000, 20_000)));
                self.slow.spawn(async move { (target, slow_reader(&addr, &token, pause, span).await) });
            }
            _ => {
                let socket = host.map(|i| self.hosts[i].daemon.socket());
                let kinds: Vec<Malice> =
                    Malice::NET.into_iter().chain(socket.is_some().then_some(Malice::UnixGarbage)).collect();
                let kind = kinds[self.rng.below(kinds.len() as u64) as usize];
                let seed = self.rng.next();
                self.clients.spawn(async move {
                    let outcome = malicious(kind, &addr, socket.as_deref(), &token, seed).await;
                    (format!("malicious {kind:?}"), outcome)
                });
            }
        }
    }

    /// A link fault that lasts a random while, then is lifted.
    fn timed_link(&mut self, kind: &str, host: usize, ms: (u64, u64), set: fn(&FaultyLink, bool)) {
        let (link, lasts) = (self.hosts[host].link.clone(), self.rng.ms(ms));
        set(&link, true);
        self.faults.add(kind, "lifted");
        tokio::spawn(async move {
            tokio::time::sleep(lasts).await;
            set(&link, false);
        });
    }

    /// A random target for a client: (name, host index, HTTP address,
    /// viewer token). It may be down: an unreachable target is an outcome too.
    fn target(&mut self) -> (String, Option<usize>, String, String) {
        let i = self.rng.below(self.hosts.len() as u64 + 1) as usize;
        match self.hosts.get(i) {
            Some(h) => (h.name.to_owned(), Some(i), h.daemon.addr.clone(), h.daemon.token()),
            None => ("gateway".to_owned(), None, self.gw.addr.clone(), self.gw.token()),
        }
    }
}

/// 0, 1, 2-5 or more: a count as an outcome label.
fn bucket(n: usize) -> &'static str {
    match n {
        0 => "0",
        1 => "1",
        2..=5 => "2-5",
        _ => "6+",
    }
}

/// `ok`, or the exit code and the first line of stderr.
fn cli_outcome(out: &std::process::Output) -> String {
    if out.status.success() {
        return "ok".to_owned();
    }
    let err = String::from_utf8_lossy(&out.stderr);
    format!("exit {:?}: {}", out.status.code(), err.lines().next().unwrap_or(""))
}

fn secs_from_env() -> u64 {
    std::env::var("RUNTAP_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SECS)
}

fn seed_from_env() -> u64 {
    std::env::var("RUNTAP_SOAK_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_faults_then_every_copy_equals_its_host() {
    let (secs, seed) = (secs_from_env(), seed_from_env());
    println!("soak: seed {seed:#x} (RUNTAP_SOAK_SEED={seed:x} replays it), {secs} s of faults");
    let mut soak = Soak::start(Rng(seed)).await;
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let mut next_fault = started + soak.rng.ms(FAULT_GAP_MS);
    let mut next_client = started + soak.rng.ms(CLIENT_GAP_MS);
    let mut n = 0;
    while Instant::now() < end {
        let now = Instant::now();
        soak.revive(now);
        if now >= next_fault {
            soak.net_fault();
            next_fault = now + soak.rng.ms(FAULT_GAP_MS);
        }
        if now >= next_client {
            soak.client_fault();
            next_client = now + soak.rng.ms(CLIENT_GAP_MS);
        }
        n += 1;
        soak.launch(n);
        soak.cancel_due(Instant::now());
        soak.collect(Instant::now());
        tokio::time::sleep(soak.rng.ms(JOB_GAP_MS)).await;
    }
    let faulted = started.elapsed();
    settle(&mut soak).await;
    let settled = started.elapsed() - faulted;
    check(&mut soak, seed, faulted, settled).await;
}

/// Stops the faults and waits (bounded) until every run is over, every
/// client gone and every link caught up.
async fn settle(soak: &mut Soak) {
    for h in &soak.hosts {
        h.link.restore();
    }
    soak.revive(Instant::now() + Duration::from_secs(3600));
    soak.to_cancel.clear();
    let deadline = Instant::now() + SETTLE;
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline.into(), soak.clients.join_next()).await {
        let (kind, outcome) = done.unwrap();
        soak.client_done(kind, outcome);
    }
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline.into(), soak.slow.join_next()).await {
        let (target, read) = done.unwrap();
        soak.slow_done(&target, read);
    }
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline.into(), soak.gw_cancels.join_next()).await {
        let (_, _, status, code) = done.unwrap();
        soak.faults.add("cancel via gateway", format!("{status} {code}"));
    }
    // Whatever of the cancelled kind is still going (a cancel that failed or never came).
    let going: Vec<(usize, String)> = soak
        .jobs
        .iter()
        .filter(|(_, job)| **job == Job::Cancelled)
        .map(|((host, id), _)| (*host, id.clone()))
        .filter(|(host, id)| {
            let path = soak.hosts[*host].daemon.state_dir().join("runs").join(id).join("events.jsonl");
            final_status(&journal_lines_lenient(&path)).is_none()
        })
        .collect();
    for (host, id) in going {
        let out = block_in_place(|| soak.hosts[host].daemon.run(&["cancel", &id]));
        soak.faults.add("cancel via socket", cli_outcome(&out));
    }
    for h in &soak.hosts {
        wait_connected(&soak.gw, h.name, true).await;
    }
    // Every run over on its host, and the gateway holding all of it.
    let (gw, hosts) = (&soak.gw, &soak.hosts);
    let caught_up = || {
        hosts.iter().all(|h| {
            run_ids(&h.daemon.state_dir()).iter().all(|r| {
                let mine = journal_lines_lenient(&h.daemon.state_dir().join("runs").join(r).join("events.jsonl"));
                let theirs = journal_lines_lenient(&gw.events_path(h.name, r));
                final_status(&mine).is_some() && theirs.len() >= mine.len()
            })
        })
    };
    while !caught_up() {
        assert!(Instant::now() < deadline, "the gateway did not catch up within {SETTLE:?}:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn check(soak: &mut Soak, seed: u64, faulted: Duration, settled: Duration) {
    let mut copies = CopyTally::default();
    for h in &soak.hosts {
        compare_host(&soak.gw, h.name, &h.daemon, &mut copies).await;
    }
    soak.problems.append(&mut copies.problems);
    statuses(soak).await;
    let figures = resources(soak).await;

    let mut by_kind: BTreeMap<Job, u64> = BTreeMap::new();
    for job in soak.jobs.values() {
        *by_kind.entry(*job).or_default() += 1;
    }
    println!(
        "\n== soak summary: seed {seed:x}, {:.0} s of faults, settled in {:.1} s ==",
        faulted.as_secs_f64(),
        settled.as_secs_f64()
    );
    println!("jobs launched: {} {by_kind:?}", soak.jobs.len());
    println!("final statuses (host journals): {:?}", copies.statuses);
    let injected: u64 = soak
        .faults
        .0
        .iter()
        .filter(|(k, _)| !k.starts_with("cancel") && !k.contains("events read"))
        .map(|(_, o)| o.values().sum::<u64>())
        .sum();
    println!("faults and clients injected: {injected}");
    for (kind, outcomes) in &soak.faults.0 {
        println!("  {kind:<28} {:>5}  {outcomes:?}", outcomes.values().sum::<u64>());
    }
    let crossed: std::collections::BTreeSet<&(usize, String)> = soak.crossed.iter().collect();
    println!("runs active across a kill -9 of their daemon: {}, each ended as its kind says", crossed.len());
    println!("slow clients read {} events, each the next of its run", soak.slow_events);
    println!(
        "copies: {} runs, {} events compared, lost {}, duplicated {}, differing {}, byte-identical {} (apart from host), served equal {}/{}",
        copies.runs,
        copies.events,
        copies.lost,
        copies.duplicated,
        copies.differing,
        copies.byte_identical,
        copies.served_equal,
        copies.runs
    );
    for line in &figures {
        println!("{line}");
    }
    println!("problems: {}", soak.problems.len());
    if !soak.problems.is_empty() {
        let keep = std::env::temp_dir().join(format!("runtap-soak-{seed:x}"));
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::write(keep.join("gateway.log"), soak.gw.log()).unwrap();
        for h in &soak.hosts {
            std::fs::write(keep.join(format!("{}.log", h.name)), h.daemon.log()).unwrap();
        }
        let shown: Vec<&String> = soak.problems.iter().take(40).collect();
        panic!("soak seed {seed:x}: {} problems (logs in {}):\n{shown:#?}", soak.problems.len(), keep.display());
    }
}

/// Each run's final status: as its kind says, even if its daemon was
/// killed under it (the run outlives it), and the same in the gateway's list.
async fn statuses(soak: &mut Soak) {
    let (_, list) = http_json(&soak.gw.addr, "GET", "/runs", Some(&soak.gw.token())).await;
    let listed: BTreeMap<(String, String), &Value> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    ((r["host"].as_str().unwrap_or("").to_owned(), r["runId"].as_str().unwrap_or("").to_owned()), r)
                })
                .collect()
        })
        .unwrap_or_default();
    for ((host, id), job) in &soak.jobs {
        let h = &soak.hosts[*host];
        let events = journal(&h.daemon.state_dir().join("runs").join(id).join("events.jsonl"));
        let got = final_status(&events).unwrap_or_default();
        let crossed = if soak.crossed.contains(&(*host, id.clone())) { " across a kill -9 of its daemon" } else { "" };
        let want = job.expected();
        if got != want {
            soak.problems.push(format!("{}/{id} ({job:?}) ended {got:?}, expected {want:?}{crossed}", h.name));
        }
        if *job == Job::Failing && events.last().map(|e| e["exitCode"].clone()) != Some(Value::from(3)) {
            soak.problems.push(format!("{}/{id}: a failing job without exit code 3: {:?}", h.name, events.last()));
        }
        let at_gw = listed.get(&(h.name.to_owned(), id.clone()));
        let (status, last) = at_gw.map_or((None, None), |r| (r["status"].as_str(), r["lastSeq"].as_u64()));
        if status != Some(got.as_str()) || last != Some(events.len() as u64) {
            soak.problems.push(format!(
                "{}/{id}: gateway lists {status:?} at seq {last:?}, host {got} at {}",
                h.name,
                events.len()
            ));
        }
    }
}

/// Waits (bounded) for every connection but the hosts' links to be gone,
/// then checks fds, zombies and RSS of every process; the summary lines.
async fn resources(soak: &mut Soak) -> Vec<String> {
    let runs: Vec<u64> = soak.hosts.iter().map(|h| run_ids(&h.daemon.state_dir()).len() as u64).collect();
    let mut procs: Vec<(String, String, u32, ProcFigures, i64, u64)> = soak
        .hosts
        .iter()
        .zip(&runs)
        .map(|(h, n)| (h.name.to_owned(), h.daemon.addr.clone(), h.daemon.pid(), h.at_start, 1, *n))
        .collect();
    // The gateway's connections: the metrics request and one link per host.
    let (gw, all_runs) = (&soak.gw, runs.iter().sum());
    procs.push(("gateway".into(), gw.addr.clone(), gw.pid(), soak.gw_at_start, 1 + HOSTS.len() as i64, all_runs));
    let mut lines = Vec::new();
    for (name, addr, pid, at_start, conns, runs) in procs {
        let deadline = Instant::now() + SETTLE;
        let (mut ws, mut open) = (None, None);
        while Instant::now() < deadline {
            (ws, open) = (metric(&addr, "runtap_websockets").await, metric(&addr, "runtap_connections").await);
            if ws == Some(0) && open == Some(conns) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if ws != Some(0) || open != Some(conns) {
            soak.problems
                .push(format!("{name}: runtap_websockets {ws:?}, runtap_connections {open:?} (want 0 and {conns})"));
        }
        let now = proc_figures(pid);
        if now.fds > at_start.fds + FD_SLACK {
            soak.problems.push(format!("{name}: {} fds, {} at the start", now.fds, at_start.fds));
        }
        let bound = RSS_BASE_KIB + RSS_PER_RUN_KIB * runs;
        if now.rss_kib > bound {
            soak.problems.push(format!("{name}: RSS {} KiB over {bound} KiB ({runs} runs)", now.rss_kib));
        }
        let zombies = zombies_of(pid);
        if !zombies.is_empty() {
            soak.problems.push(format!("{name}: zombie children {zombies:?}"));
        }
        lines.push(format!(
            "{name:<8} fds {} -> {}, RSS {} -> {} KiB (peak {} KiB, bound {bound} KiB), threads {} -> {}, websockets {ws:?}, connections {open:?}, zombies {}",
            at_start.fds, now.fds, at_start.rss_kib, now.rss_kib, now.hwm_kib, at_start.threads, now.threads, zombies.len()
        ));
    }
    let ours = zombies_of(std::process::id());
    if !ours.is_empty() {
        soak.problems.push(format!("the test's own zombie children: {ours:?}"));
    }
    lines
}
