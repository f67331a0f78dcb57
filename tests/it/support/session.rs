//! The session API as one-line calls for tests: create, look up, heartbeat, delete, the
//! active session, a request under the gate. Each asserts only what its name promises.

use std::time::Duration;

use super::Gateway;

/// A reqwest client with a short overall timeout and no proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// `POST /session`: (id, position).
pub async fn create_session(gw: &Gateway) -> (String, u64) {
    let r = client()
        .post(gw.url("/session"))
        .send()
        .await
        .expect("POST /session");
    assert_eq!(r.status().as_u16(), 201, "POST /session");
    let v: serde_json::Value = r.json().await.expect("json");
    (
        v["session_id"].as_str().expect("session_id").to_string(),
        v["position"].as_u64().expect("position"),
    )
}

/// `GET /session/{id}`: (status code, body).
pub async fn get_session(gw: &Gateway, id: &str) -> (u16, String) {
    let r = client()
        .get(gw.url(&format!("/session/{id}")))
        .send()
        .await
        .expect("GET /session/{id}");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

pub async fn delete_session(gw: &Gateway, id: &str) -> u16 {
    client()
        .delete(gw.url(&format!("/session/{id}")))
        .send()
        .await
        .expect("DELETE /session/{id}")
        .status()
        .as_u16()
}

pub async fn heartbeat(gw: &Gateway, id: &str) -> u16 {
    client()
        .post(gw.url("/session/heartbeat"))
        .header("X-Session-ID", id)
        .send()
        .await
        .expect("heartbeat")
        .status()
        .as_u16()
}

/// The ACTIVE session's public tag per `GET /active-session` (which refreshes nothing
/// and, by default, never hands out the id: compare with [`tag`]).
pub async fn active_session(gw: &Gateway) -> Option<String> {
    let r = client()
        .get(gw.url("/active-session"))
        .send()
        .await
        .expect("GET /active-session");
    if r.status().as_u16() != 200 {
        return None;
    }
    let v: serde_json::Value = r.json().await.expect("json");
    v["session_tag"].as_str().map(str::to_string)
}

/// A session's public tag, as labgate computes it (`queue::id`): the first 8 hex digits
/// of a SHA-256 of the UUID's 16 bytes.
pub fn tag(id: &str) -> String {
    use sha2::Digest;
    let uuid = uuid::Uuid::parse_str(id).expect("a session id");
    let digest = sha2::Sha256::digest(uuid.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET {path}` under the gate with `id`: (status, body).
pub async fn lab_get(gw: &Gateway, path: &str, id: &str) -> (u16, String) {
    let r = client()
        .get(gw.url(path))
        .header("X-Session-ID", id)
        .send()
        .await
        .expect("lab request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

pub fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}
