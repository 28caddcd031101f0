//! Setting the `Password` field of a Portainer user record without
//! re-serialising the rest of the JSON, so every other byte stays as Portainer
//! wrote it.

use std::ops::Range;

use zeroize::Zeroizing;

/// The record is not a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotAnObject;

/// Returns `record` with every top-level member named `Password` set to the
/// string `hash`, or with such a member added first if there is none.
///
/// Go's `encoding/json` matches member names to struct fields without regard
/// to case and keeps the last match, so every case-insensitive match of
/// `Password` is replaced. `hash` must need no JSON escaping (a bcrypt hash
/// does not).
pub(crate) fn set_password(record: &[u8], hash: &str) -> Result<Zeroizing<Vec<u8>>, NotAnObject> {
    let parsed: serde_json::Value = serde_json::from_slice(record).map_err(|_| NotAnObject)?;
    if !parsed.is_object() {
        return Err(NotAnObject);
    }
    let members = top_level_members(record).ok_or(NotAnObject)?;
    let new_value = format!("\"{hash}\"");

    let mut output = Zeroizing::new(Vec::with_capacity(record.len() + new_value.len() + 16));
    let mut cursor = 0;
    let mut replaced = false;
    for member in &members {
        let name: String =
            serde_json::from_slice(&record[member.name.clone()]).map_err(|_| NotAnObject)?;
        if !name.eq_ignore_ascii_case("Password") {
            continue;
        }
        output.extend_from_slice(&record[cursor..member.value.start]);
        output.extend_from_slice(new_value.as_bytes());
        cursor = member.value.end;
        replaced = true;
    }
    if !replaced {
        return Ok(insert_first(record, &new_value, members.is_empty()));
    }
    output.extend_from_slice(&record[cursor..]);
    Ok(output)
}

fn insert_first(record: &[u8], new_value: &str, empty: bool) -> Zeroizing<Vec<u8>> {
    let brace = record.iter().position(|&byte| byte == b'{').unwrap_or(0);
    let mut output = Zeroizing::new(Vec::with_capacity(record.len() + new_value.len() + 16));
    output.extend_from_slice(&record[..=brace]);
    output.extend_from_slice(b"\"Password\":");
    output.extend_from_slice(new_value.as_bytes());
    if !empty {
        output.push(b',');
    }
    output.extend_from_slice(&record[brace + 1..]);
    output
}

/// A member of a JSON object: byte ranges of its quoted name and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    name: Range<usize>,
    value: Range<usize>,
}

/// Lists the members of the top-level object in `json`, which the caller has
/// already validated as JSON. Returns `None` on anything unexpected.
fn top_level_members(json: &[u8]) -> Option<Vec<Member>> {
    let mut members = Vec::new();
    let mut index = skip_whitespace(json, 0);
    if *json.get(index)? != b'{' {
        return None;
    }
    index = skip_whitespace(json, index + 1);
    if *json.get(index)? == b'}' {
        return Some(members);
    }
    loop {
        let name_start = index;
        let name_end = skip_string(json, index)?;
        index = skip_whitespace(json, name_end);
        if *json.get(index)? != b':' {
            return None;
        }
        let value_start = skip_whitespace(json, index + 1);
        let value_end = skip_value(json, value_start)?;
        members.push(Member {
            name: name_start..name_end,
            value: value_start..value_end,
        });
        index = skip_whitespace(json, value_end);
        match *json.get(index)? {
            b',' => index = skip_whitespace(json, index + 1),
            b'}' => return Some(members),
            _ => return None,
        }
    }
}

fn skip_whitespace(json: &[u8], mut index: usize) -> usize {
    while json
        .get(index)
        .is_some_and(|byte| byte.is_ascii_whitespace())
    {
        index += 1;
    }
    index
}

/// Returns the index after the string starting at `index`.
fn skip_string(json: &[u8], index: usize) -> Option<usize> {
    if *json.get(index)? != b'"' {
        return None;
    }
    let mut cursor = index + 1;
    loop {
        match *json.get(cursor)? {
            b'\\' => cursor += 2,
            b'"' => return Some(cursor + 1),
            _ => cursor += 1,
        }
    }
}

/// Returns the index after the value starting at `index`.
fn skip_value(json: &[u8], index: usize) -> Option<usize> {
    match *json.get(index)? {
        b'"' => skip_string(json, index),
        b'{' | b'[' => skip_container(json, index),
        _ => {
            let mut cursor = index;
            while json
                .get(cursor)
                .is_some_and(|byte| !b",}] \t\r\n".contains(byte))
            {
                cursor += 1;
            }
            Some(cursor)
        }
    }
}

fn skip_container(json: &[u8], index: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut cursor = index;
    loop {
        match *json.get(cursor)? {
            b'"' => {
                cursor = skip_string(json, cursor)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(cursor + 1);
                }
            }
            _ => {}
        }
        cursor += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2a$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234";

    fn password_of(record: &[u8]) -> String {
        let value: serde_json::Value = serde_json::from_slice(record).expect("valid JSON");
        value["Password"].as_str().expect("string").to_owned()
    }

    #[test]
    fn replaces_password_and_keeps_other_bytes() {
        let record =
            br#"{"Id":1,"Username":"admin","Password":"old","Role":1, "Nested":{"Password":"x"}}"#;
        let updated = set_password(record, HASH).expect("object");
        let expected = format!(
            r#"{{"Id":1,"Username":"admin","Password":"{HASH}","Role":1, "Nested":{{"Password":"x"}}}}"#
        );
        assert_eq!(String::from_utf8_lossy(&updated), expected);
    }

    #[test]
    fn adds_missing_password() {
        let updated = set_password(br#"{"Id":3,"Username":"oauth"}"#, HASH).expect("object");
        assert_eq!(password_of(&updated), HASH);
        let updated = set_password(b" { } ", HASH).expect("object");
        assert_eq!(password_of(&updated), HASH);
    }

    #[test]
    fn replaces_every_case_variant() {
        let record = br#"{"password":"a","Pass\u0077ord":"b","Id":1}"#;
        let updated = set_password(record, HASH).expect("object");
        let text = String::from_utf8_lossy(&updated).into_owned();
        assert_eq!(text.matches(HASH).count(), 2);
        assert!(text.ends_with(r#","Id":1}"#));
    }

    #[test]
    fn handles_escaped_quotes_in_strings() {
        let record = br#"{"Username":"a\"b\\","Password":"old","Tags":["x\"]",{"y":[1,2]}]}"#;
        let updated = set_password(record, HASH).expect("object");
        assert_eq!(password_of(&updated), HASH);
        let value: serde_json::Value = serde_json::from_slice(&updated).expect("valid JSON");
        assert_eq!(value["Username"], "a\"b\\");
    }

    #[test]
    fn rejects_non_objects() {
        assert_eq!(set_password(b"[1,2]", HASH), Err(NotAnObject));
        assert_eq!(set_password(b"35", HASH), Err(NotAnObject));
        assert_eq!(set_password(b"\x8a\x01binary", HASH), Err(NotAnObject));
    }
}
