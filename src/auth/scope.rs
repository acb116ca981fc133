//! What a token may do, as capabilities: which runs (and, at a gateway,
//! which hosts) it may read or cancel.
//!
//! Every kind of token is a list of [`Cap`]s, so one check serves them
//! all: a static token is `[{"runs":["*"],"allow":["read","cancel"]}]`, a
//! read-only token the same without `cancel`, a restricted token
//! `[{"runs":["PREFIX*"],…}]`, and a JWT says its own in its `caps` claim.
//! The first entry whose patterns match a run decides (spec: Authentication).

use std::sync::Arc;

use serde::Deserialize;

use crate::run_id::RunId;

/// A run-ID or host pattern: exact, or a prefix when it ends in `*`
/// (`*` alone: everything). A `*` anywhere else is refused when the cap is
/// read, so a pattern never means something the issuer did not write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern(String);

impl Pattern {
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        let body = raw.strip_suffix('*').unwrap_or(raw);
        if body.contains('*') {
            return Err(format!("pattern {raw:?}: `*` only at the end"));
        }
        if raw.is_empty() {
            return Err("empty pattern".into());
        }
        Ok(Pattern(raw.to_owned()))
    }

    fn prefix(prefix: &str) -> Self {
        Pattern(format!("{prefix}*"))
    }

    fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == self.0,
        }
    }

    fn is_all(&self) -> bool {
        self.0 == "*"
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// One entry of `caps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cap {
    runs: Vec<Pattern>,
    hosts: Vec<Pattern>,
    read: bool,
    cancel: bool,
}

/// `caps` as a JWT carries it; [`Cap::from_claim`] checks it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CapClaim {
    runs: Vec<String>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
    allow: Vec<String>,
}

impl Cap {
    fn every_run(read: bool, cancel: bool) -> Self {
        Cap { runs: vec![Pattern::prefix("")], hosts: vec![Pattern::prefix("")], read, cancel }
    }

    /// A claim entry, or why it is not one (the token is then refused
    /// whole: a half-understood grant is not granted).
    pub(crate) fn from_claim(c: CapClaim) -> Result<Self, String> {
        let patterns = |v: Vec<String>| v.iter().map(|p| Pattern::parse(p)).collect::<Result<Vec<_>, _>>();
        let runs = patterns(c.runs)?;
        let hosts = match c.hosts {
            None => vec![Pattern::prefix("")],
            Some(h) => patterns(h)?,
        };
        let (mut read, mut cancel) = (false, false);
        for right in &c.allow {
            match right.as_str() {
                "read" => read = true,
                "cancel" => cancel = true,
                other => return Err(format!("unknown right {other:?} in allow (read, cancel)")),
            }
        }
        Ok(Cap { runs, hosts, read, cancel })
    }

    fn matches_run(&self, run: &RunId) -> bool {
        self.runs.iter().any(|p| p.matches(run.as_str()))
    }

    fn every_host(&self) -> bool {
        self.hosts.iter().any(Pattern::is_all)
    }
}

/// Where a run is, as far as a check knows it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum At<'a> {
    /// A daemon: runs have no host, `hosts` patterns are not consulted.
    Local,
    /// At a gateway, on this host.
    Host(&'a str),
    /// At a gateway, a request without `host=`: only what the token may
    /// do on every host is allowed.
    AnyHost,
}

impl<'a> At<'a> {
    /// For a request: `has_hosts` is the backend's, `host` the request's `host=`.
    pub(crate) fn request(has_hosts: bool, host: Option<&'a str>) -> Self {
        match (has_hosts, host) {
            (false, _) => At::Local,
            (true, Some(h)) => At::Host(h),
            (true, None) => At::AnyHost,
        }
    }

    /// For a run the backend named (a `RunRef`): a host, or none at a daemon.
    pub(crate) fn known(host: Option<&'a str>) -> Self {
        host.map_or(At::Local, At::Host)
    }
}

/// How long until `exp` (Unix seconds); zero once past. Streams turn it
/// into a deadline of their own clock when they need one.
pub(crate) fn time_left(exp: u64) -> std::time::Duration {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp);
    at.duration_since(std::time::SystemTime::now()).unwrap_or_default()
}

/// What a token may do. Cheap to clone (the caps are shared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scope {
    caps: Arc<[Cap]>,
    /// A JWT's `sub`, for log fields; static tokens have none.
    sub: Option<Arc<str>>,
    /// A JWT's `exp` (Unix seconds): open streams end then.
    expires: Option<u64>,
}

impl Scope {
    /// Every run, read and cancel: `stream.tokens`, the token file.
    pub(crate) fn full() -> Self {
        Self::of(vec![Cap::every_run(true, true)])
    }

    /// Every run, read only: `stream.read_only_tokens`.
    pub(crate) fn read_only() -> Self {
        Self::of(vec![Cap::every_run(true, false)])
    }

    /// `stream.restricted_tokens`: the runs whose ID starts with `prefix`.
    pub(crate) fn prefix(prefix: &str, cancel: bool) -> Self {
        Self::of(vec![Cap {
            runs: vec![Pattern::prefix(prefix)],
            hosts: vec![Pattern::prefix("")],
            read: true,
            cancel,
        }])
    }

    fn of(caps: Vec<Cap>) -> Self {
        Scope { caps: caps.into(), sub: None, expires: None }
    }

    /// A verified JWT's rights.
    pub(crate) fn jwt(caps: Vec<Cap>, sub: Option<String>, expires: u64) -> Self {
        Scope { caps: caps.into(), sub: sub.map(Into::into), expires: Some(expires) }
    }

    /// The rights the first matching entry grants, as `(read, cancel)`.
    fn rights(&self, at: At<'_>, run: &RunId) -> (bool, bool) {
        // Without a host, a host-restricted entry may or may not decide:
        // grant only what it and every later candidate agree on.
        let (mut read, mut cancel) = (true, true);
        for cap in self.caps.iter().filter(|c| c.matches_run(run)) {
            let decides = match at {
                At::Local => true,
                At::Host(h) => cap.hosts.iter().any(|p| p.matches(h)),
                At::AnyHost => cap.every_host(),
            };
            if decides {
                return (read && cap.read, cancel && cap.read && cap.cancel);
            }
            if matches!(at, At::AnyHost) {
                read &= cap.read;
                cancel &= cap.read && cap.cancel;
            }
        }
        (false, false)
    }

    /// May read (stream, list, get, download) this run.
    pub(crate) fn allows(&self, at: At<'_>, run: &RunId) -> bool {
        self.rights(at, run).0
    }

    /// May cancel this run (and read it: a token never cancels what it cannot see).
    pub(crate) fn may_cancel(&self, at: At<'_>, run: &RunId) -> bool {
        self.rights(at, run).1
    }

    /// Whether some entry lets it read runs on this host (`GET /hosts`
    /// lists only those).
    pub(crate) fn sees_host(&self, host: &str) -> bool {
        self.caps.iter().any(|c| c.read && c.hosts.iter().any(|p| p.matches(host)))
    }

    /// Whether this token cancels anything at all (`GET /me`: the page
    /// shows the cancel button or not).
    pub(crate) fn cancels(&self) -> bool {
        self.caps.iter().any(|c| c.read && c.cancel)
    }

    /// The run patterns it may read, as `GET /me` shows them: `"*"` for
    /// every run (as before caps), one pattern as a string, else a list.
    pub(crate) fn runs_json(&self) -> serde_json::Value {
        let mut patterns: Vec<&str> = Vec::new();
        for p in self.caps.iter().filter(|c| c.read).flat_map(|c| &c.runs) {
            if !patterns.contains(&p.as_str()) {
                patterns.push(p.as_str());
            }
        }
        match patterns.as_slice() {
            [one] => serde_json::Value::from(*one),
            _ => serde_json::Value::from(patterns),
        }
    }

    /// A restricted token's prefix (Socket.IO's `tenantId`): the one run
    /// pattern, when there is one and it is not `*`.
    pub(crate) fn tenant(&self) -> Option<&str> {
        match &*self.caps {
            [cap] => match cap.runs.as_slice() {
                [p] if !p.is_all() => Some(p.as_str().strip_suffix('*').unwrap_or(p.as_str())),
                _ => None,
            },
            _ => None,
        }
    }

    pub(crate) fn sub(&self) -> Option<&str> {
        self.sub.as_deref()
    }

    /// When the token stops being valid (Unix seconds); `None` for static tokens.
    pub(crate) fn expires(&self) -> Option<u64> {
        self.expires
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> RunId {
        RunId::parse(s).unwrap()
    }

    fn caps(json: &str) -> Scope {
        let claims: Vec<CapClaim> = serde_json::from_str(json).unwrap();
        Scope::jwt(claims.into_iter().map(|c| Cap::from_claim(c).unwrap()).collect(), None, 0)
    }

    #[test]
    fn first_matching_entry_decides() {
        let s =
            caps(r#"[{"runs":["build-7"],"allow":["read"]},{"runs":["build-*","ci-42"],"allow":["read","cancel"]}]"#);
        assert!(s.allows(At::Local, &run("build-7")) && !s.may_cancel(At::Local, &run("build-7")));
        assert!(s.may_cancel(At::Local, &run("build-8")) && s.may_cancel(At::Local, &run("ci-42")));
        assert!(!s.allows(At::Local, &run("ci-420")) && !s.allows(At::Local, &run("other-1")));
        assert_eq!(s.runs_json(), serde_json::json!(["build-7", "build-*", "ci-42"]));
        assert!(s.cancels());
    }

    #[test]
    fn hosts_at_a_gateway() {
        let s = caps(r#"[{"runs":["*"],"hosts":["web-*"],"allow":["read","cancel"]},{"runs":["*"],"allow":["read"]}]"#);
        let r = run("x");
        assert!(s.may_cancel(At::Host("web-1"), &r));
        assert!(s.allows(At::Host("db-1"), &r) && !s.may_cancel(At::Host("db-1"), &r));
        assert!(s.allows(At::AnyHost, &r) && !s.may_cancel(At::AnyHost, &r), "only what every host allows");
        assert!(s.may_cancel(At::Local, &r), "a daemon has no hosts");
        let only_web = caps(r#"[{"runs":["*"],"hosts":["web-*"],"allow":["read"]}]"#);
        assert!(!only_web.allows(At::AnyHost, &r) && !only_web.allows(At::Host("db-1"), &r));
    }

    #[test]
    fn static_kinds_and_bad_claims() {
        assert_eq!(Scope::full().runs_json(), serde_json::json!("*"));
        assert!(!Scope::read_only().cancels());
        let p = Scope::prefix("a-", false);
        assert!(p.allows(At::Local, &run("a-1")) && !p.allows(At::Local, &run("b-1")));
        assert_eq!((p.runs_json(), p.tenant()), (serde_json::json!("a-*"), Some("a-")));
        for bad in [r#"{"runs":["a*b"],"allow":["read"]}"#, r#"{"runs":["a"],"allow":["write"]}"#] {
            let claim: CapClaim = serde_json::from_str(bad).unwrap();
            assert!(Cap::from_claim(claim).is_err(), "{bad}");
        }
    }
}
