//! Launching and cancelling the job: runtap over its Unix socket, the
//! baselines by `POST /launch` and `POST /cancel` (bench/common.js).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use crate::cli::{Proto, Target};

/// Launches the job: runtap over its Unix socket, the baselines by HTTP.
pub(crate) async fn launch(t: &Target, command: &[String]) -> Result<(), String> {
    match t.proto {
        Proto::Runtap | Proto::RuntapSocketio => {
            let req = json!({"type": "launch", "runId": t.run_id, "command": command});
            let answer = unix_request(socket_of(t)?, &req).await?;
            match answer["type"].as_str() {
                Some("launched") => Ok(()),
                _ => Err(format!("launch refused: {answer}")),
            }
        }
        Proto::Ws | Proto::Socketio => {
            let body = json!({"runId": t.run_id, "command": command}).to_string();
            http_post(&t.addr, "/launch", &body).await
        }
    }
}

pub(crate) async fn cancel(t: &Target) -> Result<(), String> {
    match t.proto {
        Proto::Runtap | Proto::RuntapSocketio => {
            unix_request(socket_of(t)?, &json!({"type": "cancel", "runId": t.run_id})).await.map(|_| ())
        }
        Proto::Ws | Proto::Socketio => http_post(&t.addr, &format!("/cancel?runId={}", t.run_id), "").await,
    }
}

pub(crate) fn socket_of(t: &Target) -> Result<&PathBuf, String> {
    t.socket.as_ref().ok_or_else(|| "--socket is required with --proto runtap".to_string())
}

/// One request, one answer line, on a fresh Unix socket connection.
pub(crate) async fn unix_request(path: &PathBuf, req: &Value) -> Result<Value, String> {
    let io = async {
        let mut s = UnixStream::connect(path).await.map_err(|e| format!("connect {}: {e}", path.display()))?;
        s.write_all(format!("{req}\n").as_bytes()).await.map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await.map_err(|e| e.to_string())?;
        serde_json::from_str(&line).map_err(|e| format!("bad answer {line:?}: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(10), io).await.map_err(|_| "unix request timed out".to_string())?
}

pub(crate) async fn http_post(addr: &str, path: &str, body: &str) -> Result<(), String> {
    let io = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
        let resp = String::from_utf8_lossy(&resp);
        if resp.starts_with("HTTP/1.1 200") { Ok(()) } else { Err(format!("POST {path}: {resp}")) }
    };
    tokio::time::timeout(Duration::from_secs(10), io).await.map_err(|_| "http request timed out".to_string())?
}
