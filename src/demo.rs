//! A fake lab for newcomers without lab hardware: a tiny device API on loopback that
//! labgate can front, so the README walk-through, and neops-remote-lab's
//! `RemoteLabClient` (upload a topology, list the devices, release, destroy), run end to
//! end on any machine.
//!
//! Speaks the lab half of the neops-remote-lab 1.4.0 server's API, in its shapes
//! (`POST /lab` -> `{"reused", "devices": [{"name", "raw"}]}`, `GET /lab/devices` -> a list
//! of devices, `POST /lab/release` -> 204, `DELETE /lab` -> 202), plus a few demo-only
//! paths (`/lab/devices/{name}`, `/lab/devices/{name}/commands`, `/lab/echo`).
//!
//! Owns only canned answers: its lab is always "up" with the same three devices, whatever
//! topology is uploaded (nothing is started), so it keeps no state between requests.
//! Must never be mistaken for a real lab: every answer says `"demo": true` (in each
//! device's `raw` where the answer is a list). It accepts paths with or without a
//! leading `/lab`, so it works with and without `strip_prefix`.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

/// The largest request body the demo reads; the rest is ignored.
const MAX_BODY: usize = 64 * 1024;

/// The most multipart parts looked at in one upload.
const MAX_PARTS: usize = 32;

const DEVICES: [(&str, &str, &str); 3] = [
    ("r1", "frr", "10.0.0.1"),
    ("r2", "frr", "10.0.0.2"),
    ("sw1", "eos", "10.0.0.11"),
];

pub struct DemoLab;

/// A device as neops-remote-lab's `DeviceInfoDto`: `name` and the `raw` node data
/// (`netlab inspect` on a real lab).
fn device(name: &str) -> Option<Value> {
    DEVICES
        .iter()
        .find(|d| d.0 == name)
        .map(|(name, kind, ip)| {
            json!({"name": name, "raw": {"demo": true, "device": kind, "mgmt": {"ipv4": ip},
                                     "state": "running"}})
        })
}

fn devices() -> Vec<Value> {
    DEVICES.iter().filter_map(|d| device(d.0)).collect()
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

fn no_content(status: u16) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-length", 0)
        .body(Vec::new())
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

/// What `POST /lab` must carry, checked the way the real server's FastAPI form does.
#[derive(Debug, PartialEq, Eq)]
enum Upload {
    /// A `topology` file part with a `.yml`/`.yaml` name (its content may be empty:
    /// neops-remote-lab 1.4.0 re-posts an exhausted file object after a 423).
    Topology,
    /// No `topology` part (FastAPI: 422 "Field required").
    Missing,
    /// A `topology` part whose file name is not `.yml`/`.yaml` (the server: 400).
    NotYaml,
}

/// Finds the `topology` part of a `multipart/form-data` body and judges its file name.
///
/// Hand-written rather than a multipart crate: the demo needs only the part headers of
/// a body it has already read (at most [`MAX_BODY`]), and looks at no content.
fn topology_upload(content_type: &str, body: &[u8]) -> Upload {
    let Some(boundary) = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty())
    else {
        return Upload::Missing;
    };
    let body = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    for part in body.split(delimiter.as_str()).skip(1).take(MAX_PARTS) {
        let head = part.split("\r\n\r\n").next().unwrap_or_default();
        let Some(disposition) = head.split("\r\n").find(|line| {
            line.get(..20)
                .is_some_and(|n| n.eq_ignore_ascii_case("content-disposition:"))
        }) else {
            continue;
        };
        let param = |key: &str| {
            disposition.split(';').map(str::trim).find_map(|p| {
                p.strip_prefix(key)
                    .and_then(|v| v.strip_prefix('='))
                    .map(|v| v.trim_matches('"').to_string())
            })
        };
        if param("name").as_deref() != Some("topology") {
            continue;
        }
        let yaml = param("filename").is_some_and(|f| {
            let f = f.to_ascii_lowercase();
            f.ends_with(".yml") || f.ends_with(".yaml")
        });
        return if yaml {
            Upload::Topology
        } else {
            Upload::NotYaml
        };
    }
    Upload::Missing
}

#[async_trait]
impl ServeHttp for DemoLab {
    async fn response(&self, http: &mut ServerSession) -> Response<Vec<u8>> {
        let req = http.req_header();
        let method = req.method.clone();
        let full_path = req.uri.path().to_string();
        let path = full_path.strip_prefix("/lab").unwrap_or(&full_path);
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let content_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let headers: serde_json::Map<String, Value> = req
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
            .collect();
        match (method.as_str(), segments.as_slice()) {
            // neops-remote-lab's LabStatusDto, plus demo hints.
            ("GET", []) => reply(
                200,
                json!({"running": true, "topology": null, "ref_count": 0, "devices": devices(),
                       "netlab_status": null, "demo": true, "lab": "labgate demo lab",
                       "try": ["/lab/devices", "/lab/devices/r1", "/lab/echo"]}),
            ),
            // RemoteLabClient.acquire(): a topology upload, answered with the devices.
            ("POST", []) => {
                let body = read_body(http).await;
                match topology_upload(&content_type, &body) {
                    Upload::Topology => reply(200, json!({"reused": false, "devices": devices()})),
                    Upload::NotYaml => reply(
                        400,
                        json!({"detail": "Topology must be a .yml or .yaml file"}),
                    ),
                    Upload::Missing => reply(
                        422,
                        json!({"detail": [{"type": "missing", "loc": ["body", "topology"],
                                           "msg": "Field required", "input": null}]}),
                    ),
                }
            }
            // RemoteLabClient.release() and .destroy(): nothing to stop in a demo.
            ("POST", ["release"]) => no_content(204),
            ("DELETE", []) => no_content(202),
            ("GET", ["devices"]) => reply(200, Value::Array(devices())),
            ("GET", ["devices", name]) => match device(name) {
                Some(d) => reply(200, d),
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

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=b0undary";

    fn form(parts: &[(&str, Option<&str>, &str)]) -> Vec<u8> {
        let mut body = String::new();
        for (name, filename, content) in parts {
            body += "--b0undary\r\n";
            match filename {
                Some(f) => {
                    body += &format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                         Content-Type: application/x-yaml\r\n"
                    )
                }
                None => body += &format!("Content-Disposition: form-data; name=\"{name}\"\r\n"),
            }
            body += &format!("\r\n{content}\r\n");
        }
        body += "--b0undary--\r\n";
        body.into_bytes()
    }

    #[test]
    fn a_topology_upload_is_recognised_like_the_neops_server_does() {
        let yml = form(&[
            ("reuse", None, "false"),
            ("topology", Some("t.yml"), "nodes: [r1]"),
        ]);
        assert_eq!(topology_upload(CT, &yml), Upload::Topology);
        let upper = form(&[("topology", Some("T.YAML"), "")]);
        assert_eq!(topology_upload(CT, &upper), Upload::Topology);
        // The client's retry after a 423 re-posts an exhausted file: empty content.
        let empty = form(&[
            ("topology", Some("topology.yml"), ""),
            ("reuse", None, "true"),
        ]);
        assert_eq!(topology_upload(CT, &empty), Upload::Topology);
        let txt = form(&[("topology", Some("t.txt"), "x")]);
        assert_eq!(topology_upload(CT, &txt), Upload::NotYaml);
        let no_name = form(&[("topology", None, "nodes: [r1]")]);
        assert_eq!(topology_upload(CT, &no_name), Upload::NotYaml);
        let other = form(&[("reuse", None, "true")]);
        assert_eq!(topology_upload(CT, &other), Upload::Missing);
        assert_eq!(topology_upload("application/json", b"{}"), Upload::Missing);
        assert_eq!(topology_upload(CT, b""), Upload::Missing);
        assert_eq!(
            topology_upload("multipart/form-data; boundary=", &yml),
            Upload::Missing
        );
        // Garbage never panics.
        assert_eq!(
            topology_upload(CT, b"--b0undary\r\ncontent-disposition"),
            Upload::Missing
        );
        assert_eq!(topology_upload(CT, &[0xff; 100]), Upload::Missing);
    }

    #[test]
    fn devices_have_the_neops_device_shape_and_say_demo() {
        for d in devices() {
            assert!(d["name"].is_string(), "{d}");
            assert!(d["raw"].is_object(), "{d}");
            assert_eq!(d["raw"]["demo"], true, "{d}");
            assert_eq!(d.as_object().map(|o| o.len()), Some(2), "{d}");
        }
        assert_eq!(devices().len(), DEVICES.len());
    }
}
