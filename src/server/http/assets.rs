//! The dashboard: the files of `web/`, built into the binary.
//!
//! `cargo build` alone makes a binary that serves the page: each file is
//! `include_bytes!`-ed from one list, [`ASSETS`], with its content type.
//! `GET /` is `index.html`; `GET /ui/NAME` the others. They need no token:
//! the page is the same for everyone and logs in itself, and what it shows
//! comes from the token-checked API.
//!
//! Every answer carries a Content-Security-Policy that allows only the
//! page's own scripts, styles and connections (no inline script, no other
//! origin, no framing), and `Cache-Control: no-cache` with a strong ETag
//! (a hash of the bytes): a browser asks again each time and gets a 304
//! until the binary changes, so an upgraded daemon never serves a stale page.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::Body;

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Scripts, styles and connections (the API, the WebSocket) from this
/// origin only; images also as `data:` URLs; nothing else, and the page
/// may not be framed, change its base URL or submit forms elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $name)),
        }
    };
}

/// Every file the page is made of: the only list. A file not here is 404.
const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("style.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ansi.js", JS),
    asset!("logview.js", JS),
    asset!("runs.js", JS),
    asset!("runview.js", JS),
    asset!("dom.js", JS),
];

/// The ETag of each asset, in `ASSETS` order, hashed once on first use.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            // Hex digits in quotes: always a valid header value.
            HeaderValue::from_str(&format!("\"{:016x}-{:x}\"", fnv1a(a.bytes), a.bytes.len()))
                .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// FNV-1a, 64 bits: the ETag only has to change when the bytes do.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `GET /` and `GET /ui/NAME` (HEAD too: hyper sends no body for it);
/// `None` for a name that is not in the list.
pub(super) fn serve(name: &str, request: &HeaderMap) -> Option<Response<Body>> {
    let i = ASSETS.iter().position(|a| a.name == name)?;
    let (asset, etag) = (&ASSETS[i], ETAGS.get(i)?.clone());
    let fresh = request.get_all(header::IF_NONE_MATCH).iter().any(|v| matches_etag(v, &etag));
    let mut r = if fresh {
        let mut r = Response::new(Full::default());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(asset.bytes)));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        r
    };
    let h = r.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Some(r)
}

/// `If-None-Match`: `*`, or a list of tags compared weakly (RFC 9110
/// §13.1.2: `W/"x"` matches `"x"`).
fn matches_etag(value: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else { return false };
    let ours = etag.as_bytes();
    value.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/").as_bytes() == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_type_and_an_etag() {
        for a in ASSETS {
            let r = serve(a.name, &HeaderMap::new()).unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[header::CONTENT_TYPE], a.content_type);
            let etag = r.headers()[header::ETAG].clone();
            let mut again = HeaderMap::new();
            again.insert(header::IF_NONE_MATCH, etag);
            assert_eq!(serve(a.name, &again).unwrap().status(), StatusCode::NOT_MODIFIED, "{}", a.name);
        }
        assert!(serve("secret.txt", &HeaderMap::new()).is_none());
        assert!(serve("../Cargo.toml", &HeaderMap::new()).is_none());
    }

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let etag = HeaderValue::from_static("\"abc-1\"");
        for (value, want) in
            [("\"abc-1\"", true), ("W/\"abc-1\"", true), ("\"x\", \"abc-1\"", true), ("*", true), ("\"abc\"", false)]
        {
            assert_eq!(matches_etag(&HeaderValue::from_static(value), &etag), want, "{value}");
        }
    }
}
