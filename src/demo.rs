//! A fake lab for newcomers without lab hardware: a tiny device API on loopback that
//! labgate can front, so the README walk-through runs end to end on any machine.
//!
//! Owns only canned answers; it keeps no state between requests. Must never be mistaken
//! for a real lab: every answer says `"demo": true`. It accepts paths with or without a
//! leading `/lab`, so it works with and without `strip_prefix`.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

/// The largest request body the demo reads; the rest is ignored.
const MAX_BODY: usize = 64 * 1024;

const DEVICES: [(&str, &str, &str); 3] = [
    ("r1", "frr", "10.0.0.1"),
    ("r2", "frr", "10.0.0.2"),
    ("sw1", "eos", "10.0.0.11"),
];

pub struct DemoLab;

fn device(name: &str) -> Option<Value> {
    DEVICES.iter().find(|d| d.0 == name).map(
        |(name, kind, ip)| json!({"name": name, "kind": kind, "mgmt_ip": ip, "state": "running"}),
    )
}

fn reply(status: u16, body: Value) -> Response<Vec<u8>> {
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", bytes.len())
        .body(bytes)
        .unwrap_or_default()
}

async fn read_body(http: &mut ServerSession) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = http.read_request_body().await {
        let room = MAX_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    body
}

#[async_trait]
impl ServeHttp for DemoLab {
    async fn response(&self, http: &mut ServerSession) -> Response<Vec<u8>> {
        let req = http.req_header();
        let method = req.method.clone();
        let full_path = req.uri.path().to_string();
        let path = full_path.strip_prefix("/lab").unwrap_or(&full_path);
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let headers: serde_json::Map<String, Value> = req
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
            .collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", []) => reply(
                200,
                json!({"demo": true, "lab": "labgate demo lab", "devices": DEVICES.len(),
                       "try": ["/lab/devices", "/lab/devices/r1", "/lab/echo"]}),
            ),
            ("GET", ["devices"]) => reply(
                200,
                json!({"demo": true, "devices": DEVICES.iter().filter_map(|d| device(d.0)).collect::<Vec<_>>()}),
            ),
            ("GET", ["devices", name]) => match device(name) {
                Some(d) => reply(200, json!({"demo": true, "device": d})),
                None => reply(404, json!({"demo": true, "detail": "No such device"})),
            },
            ("POST", ["devices", name, "commands"]) => {
                let body = read_body(http).await;
                match device(name) {
                    Some(_) => {
                        let command = String::from_utf8_lossy(&body).trim().to_string();
                        reply(
                            200,
                            json!({"demo": true, "device": name, "command": command,
                                          "output": format!("% demo: '{command}' accepted")}),
                        )
                    }
                    None => reply(404, json!({"demo": true, "detail": "No such device"})),
                }
            }
            (_, ["echo", ..]) => {
                let body = read_body(http).await;
                reply(
                    200,
                    json!({"demo": true, "method": method.as_str(), "path": full_path,
                                  "headers": headers, "body_bytes": body.len()}),
                )
            }
            _ => reply(404, json!({"demo": true, "detail": "Not Found"})),
        }
    }
}
