//! A session's label: who says they hold it and why (`owner`, `note`), from the optional
//! JSON body of `POST /session` (contract §7 "owner and note").
//!
//! Owns the body's rules (size, fields, lengths, printable text, the `Content-Type`) and
//! the FastAPI-shaped `422` detail naming what is wrong. A label is a claim, shown and
//! never trusted: it must never decide anything (identity mode's verified identity is
//! kept apart from it), and it is bounded and free of control characters before anything
//! stores, logs or renders it. Pure: no I/O.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The largest `POST /session` body read, in bytes.
pub const MAX_BODY: usize = 2048;
/// The longest `owner`, in characters.
pub const MAX_OWNER: usize = 64;
/// The longest `note`, in characters.
pub const MAX_NOTE: usize = 200;

/// What a session says about itself; both parts optional, empty when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Label {
    pub fn is_empty(&self) -> bool {
        self.owner.is_none() && self.note.is_none()
    }

    /// A label read back from somewhere less strict than [`parse`] (the store file):
    /// each part cleaned to what [`parse`] would have accepted, or dropped.
    pub fn sanitised(self) -> Label {
        let clean = |v: Option<String>, max: usize| {
            v.map(|s| truncate(&printable(&s), max))
                .filter(|s| !s.is_empty())
        };
        Label {
            owner: clean(self.owner, MAX_OWNER),
            note: clean(self.note, MAX_NOTE),
        }
    }
}

/// Why a body was refused: FastAPI's validation error list, one item per problem,
/// served as `422 {"detail": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invalid {
    pub detail: Vec<Value>,
}

impl Invalid {
    fn one(kind: &str, loc: Value, msg: &str, input: Value, ctx: Option<Value>) -> Invalid {
        let mut item = json!({ "type": kind, "loc": loc, "msg": msg, "input": input });
        if let (Some(ctx), Some(map)) = (ctx, item.as_object_mut()) {
            map.insert("ctx".to_string(), ctx);
        }
        Invalid { detail: vec![item] }
    }
}

/// Reads a `POST /session` body. `content_type`: the header as sent (`None` when
/// absent); `body`: what was read, `too_large` when more than [`MAX_BODY`] bytes were
/// sent (or announced). An empty body is no label: neops clients send none.
pub fn parse(content_type: Option<&[u8]>, body: &[u8], too_large: bool) -> Result<Label, Invalid> {
    if too_large {
        return Err(Invalid::one(
            "too_long",
            json!(["body"]),
            &format!("Body should have at most {MAX_BODY} bytes"),
            Value::Null,
            Some(json!({ "max_length": MAX_BODY })),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Label::default());
    }
    if !content_type.is_some_and(is_json) {
        let sent = content_type.map_or(Value::Null, |c| {
            Value::String(truncate(&printable(&String::from_utf8_lossy(c)), 100))
        });
        return Err(Invalid::one(
            "content_type",
            json!(["header", "Content-Type"]),
            "Content-Type should be application/json when a body is sent",
            sent,
            None,
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Invalid::one(
            "json_invalid",
            json!(["body", offset(body, e.line(), e.column())]),
            "JSON decode error",
            json!({}),
            Some(json!({ "error": e.to_string() })),
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(Invalid::one(
            "model_attributes_type",
            json!(["body"]),
            "Input should be a valid dictionary or object to extract fields from",
            value,
            None,
        ));
    };
    let mut label = Label::default();
    let mut problems = Vec::new();
    for (name, value) in fields {
        let (slot, max) = match name.as_str() {
            "owner" => (&mut label.owner, MAX_OWNER),
            "note" => (&mut label.note, MAX_NOTE),
            _ => {
                problems.extend(
                    Invalid::one(
                        "extra_forbidden",
                        json!(["body", name]),
                        "Extra inputs are not permitted",
                        value,
                        None,
                    )
                    .detail,
                );
                continue;
            }
        };
        match field(&name, value, max) {
            Ok(v) => *slot = v,
            Err(item) => problems.extend(item.detail),
        }
    }
    if problems.is_empty() {
        Ok(label)
    } else {
        Err(Invalid { detail: problems })
    }
}

/// One string field: `null` or blank is absent; surrounding whitespace is dropped.
fn field(name: &str, value: Value, max: usize) -> Result<Option<String>, Invalid> {
    let loc = json!(["body", name]);
    let text = match value {
        Value::Null => return Ok(None),
        Value::String(s) => s,
        other => {
            return Err(Invalid::one(
                "string_type",
                loc,
                "Input should be a valid string",
                other,
                None,
            ))
        }
    };
    if text.chars().any(|c| !is_printable(c)) {
        return Err(Invalid::one(
            "string_unprintable",
            loc,
            "String should hold printable characters only (no control or bidi formatting characters)",
            Value::String(text),
            None,
        ));
    }
    let text = text.trim();
    if text.chars().count() > max {
        return Err(Invalid::one(
            "string_too_long",
            loc,
            &format!("String should have at most {max} characters"),
            Value::String(text.to_string()),
            Some(json!({ "max_length": max })),
        ));
    }
    Ok((!text.is_empty()).then(|| text.to_string()))
}

/// `application/json`, in any case, with or without parameters (`; charset=utf-8`).
fn is_json(content_type: &[u8]) -> bool {
    let media = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    media.eq_ignore_ascii_case(b"application/json")
}

/// The byte offset of serde's 1-based (line, column), as FastAPI reports a position.
fn offset(body: &[u8], line: usize, column: usize) -> usize {
    let line_start: usize = body
        .split(|&b| b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (line_start + column.saturating_sub(1)).min(body.len())
}

/// Whether `c` may appear in a label: no control characters (a log line or a terminal
/// row must stay one line and uncoloured) and no invisible bidi or line-breaking
/// formatting (which could make a label read as something else).
pub fn is_printable(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` without the characters [`is_printable`] refuses.
pub fn printable(s: &str) -> String {
    s.chars().filter(|&c| is_printable(c)).collect()
}

/// At most `max` characters of `s`, blanks around it dropped.
pub fn truncate(s: &str, max: usize) -> String {
    s.trim()
        .chars()
        .take(max)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&[u8]> = Some(b"application/json");

    fn refused(ct: Option<&[u8]>, body: &str) -> Value {
        let e = parse(ct, body.as_bytes(), false).expect_err(body);
        serde_json::to_value(&e).unwrap()
    }

    #[test]
    fn no_body_or_an_empty_one_is_no_label_whatever_the_content_type() {
        assert_eq!(parse(None, b"", false), Ok(Label::default()));
        assert_eq!(parse(Some(b"text/plain"), b"", false), Ok(Label::default()));
        assert_eq!(parse(None, b" \r\n", false), Ok(Label::default()));
        assert_eq!(parse(JSON, b"{}", false), Ok(Label::default()));
    }

    #[test]
    fn owner_and_note_are_read_trimmed_and_blank_is_absent() {
        let l = parse(
            Some(b"Application/JSON; charset=utf-8"),
            r#"{"owner":" alice@ci-7 ","note":"nightly: https://ci/x/1 – ünïcode"}"#.as_bytes(),
            false,
        )
        .unwrap();
        assert_eq!(l.owner.as_deref(), Some("alice@ci-7"));
        assert_eq!(l.note.as_deref(), Some("nightly: https://ci/x/1 – ünïcode"));
        let l = parse(JSON, br#"{"owner":"  ","note":null}"#, false).unwrap();
        assert!(l.is_empty());
        // Exactly at the limits (characters, not bytes).
        let owner = "é".repeat(MAX_OWNER);
        let note = "n".repeat(MAX_NOTE);
        let body = json!({ "owner": owner, "note": note }).to_string();
        let l = parse(JSON, body.as_bytes(), false).unwrap();
        assert_eq!(l.owner, Some(owner));
        assert_eq!(l.note, Some(note));
    }

    #[test]
    fn every_refusal_names_the_field_in_fastapis_shape() {
        let long = json!({ "owner": "x".repeat(MAX_OWNER + 1) }).to_string();
        let e = refused(JSON, &long);
        assert_eq!(e["detail"][0]["type"], "string_too_long");
        assert_eq!(e["detail"][0]["loc"], json!(["body", "owner"]));
        assert_eq!(e["detail"][0]["ctx"]["max_length"], MAX_OWNER);
        let long = json!({ "note": "x".repeat(MAX_NOTE + 1) }).to_string();
        assert_eq!(
            refused(JSON, &long)["detail"][0]["loc"],
            json!(["body", "note"])
        );

        let e = refused(JSON, r#"{"owner":"a","admin":true}"#);
        assert_eq!(e["detail"][0]["type"], "extra_forbidden");
        assert_eq!(e["detail"][0]["loc"], json!(["body", "admin"]));

        let e = refused(JSON, r#"{"owner":"a\u001b[31mred","note":42}"#);
        let items = e["detail"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{e}");
        assert!(items
            .iter()
            .any(|i| i["type"] == "string_unprintable" && i["loc"] == json!(["body", "owner"])));
        assert!(items
            .iter()
            .any(|i| i["type"] == "string_type" && i["loc"] == json!(["body", "note"])));
        for sneaky in ["a\nb", "a\u{202e}b", "a\u{2028}b", "\u{7f}", "a\tb"] {
            let body = json!({ "owner": sneaky }).to_string();
            assert_eq!(
                refused(JSON, &body)["detail"][0]["type"],
                "string_unprintable"
            );
        }

        let e = refused(JSON, r#"{"owner": "a",}"#);
        assert_eq!(e["detail"][0]["type"], "json_invalid");
        assert_eq!(e["detail"][0]["loc"][0], "body");
        assert!(e["detail"][0]["loc"][1].is_u64(), "{e}");
        assert_eq!(
            refused(JSON, "[1]")["detail"][0]["type"],
            "model_attributes_type"
        );
        assert_eq!(refused(JSON, "\"x\"")["detail"][0]["loc"], json!(["body"]));

        for ct in [None, Some(&b"text/plain"[..]), Some(b"application/jsonx")] {
            let e = refused(ct, r#"{"owner":"a"}"#);
            assert_eq!(
                e["detail"][0]["loc"],
                json!(["header", "Content-Type"]),
                "{e}"
            );
        }
        let e = serde_json::to_value(parse(JSON, b"{}", true).unwrap_err()).unwrap();
        assert_eq!(e["detail"][0]["loc"], json!(["body"]));
        assert_eq!(e["detail"][0]["ctx"]["max_length"], MAX_BODY);
    }

    #[test]
    fn a_stored_label_is_cleaned_not_trusted() {
        let l = Label {
            owner: Some(format!("ev\u{1b}il{}", "x".repeat(100))),
            note: Some("\u{202e} ".into()),
        }
        .sanitised();
        assert_eq!(
            l.owner.as_deref().map(|o| o.chars().count()),
            Some(MAX_OWNER)
        );
        assert!(l.owner.unwrap().starts_with("evilx"));
        assert_eq!(l.note, None);
    }
}
