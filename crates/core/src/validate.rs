//! Input rules. Each returns an `InvalidInput` error that says what is allowed.

use std::collections::BTreeMap;

use holdfast_types::Error;

use crate::Result;

pub const MAX_DISPLAY_NAME: usize = 200;
pub const MAX_DESCRIPTION: usize = 4000;
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_KEY: usize = 128;
pub const MAX_TAG_VALUE: usize = 256;

/// Project names: 3 to 63 of `a-z`, `0-9` and `-`, starting and ending with a letter or digit
/// (so they are usable as DNS labels and path segments).
pub fn project_name(name: &str) -> Result<()> {
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let bytes = name.as_bytes();
    let ok = (3..=63).contains(&bytes.len())
        && bytes.iter().all(|&b| ok_char(b))
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid project name {name:?}: use 3 to 63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        )))
    }
}

/// Custom role and identity names: 1 to 64 of `a-z`, `0-9`, `-` and `_`, starting with a letter
/// (they appear in paths and on command lines).
pub fn role_name(name: &str) -> Result<()> {
    identifier("role", name)
}

pub fn identity_name(name: &str) -> Result<()> {
    identifier("identity", name)
}

fn identifier(what: &str, name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    let ok = (1..=64).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid {what} name {name:?}: use 1 to 64 lowercase letters, digits, '-' and '_', starting with a letter"
        )))
    }
}

pub fn principal_name(name: &str) -> Result<()> {
    text("name", name, 1, 128)
}

pub fn display_name(value: &str) -> Result<()> {
    text("display_name", value, 0, MAX_DISPLAY_NAME)
}

pub fn description(value: &str) -> Result<()> {
    text("description", value, 0, MAX_DESCRIPTION)
}

/// Checks the tags a project would have after a change.
pub fn tags(tags: &BTreeMap<String, String>) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid(format!("too many tags: {} (at most {MAX_TAGS})", tags.len())));
    }
    for (k, v) in tags {
        text("tag key", k, 1, MAX_TAG_KEY)?;
        text(&format!("tag {k:?}"), v, 0, MAX_TAG_VALUE)?;
    }
    Ok(())
}

fn text(field: &str, value: &str, min: usize, max: usize) -> Result<()> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(Error::invalid(format!("{field} must be {min} to {max} characters, got {len}")));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(format!("{field} must not contain control characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        for good in ["abc", "my-project-1", "a1b", &"x".repeat(63)] {
            assert!(project_name(good).is_ok(), "{good}");
        }
        for bad in ["ab", "-abc", "abc-", "ABC", "a_b", "a.b", "", &"x".repeat(64), "proj_x", "ab c", "é-ab"] {
            assert!(project_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tag_rules() {
        let mut t = BTreeMap::new();
        t.insert("env".to_owned(), "prod".to_owned());
        assert!(tags(&t).is_ok());
        t.insert(String::new(), "x".to_owned());
        assert!(tags(&t).is_err());
        let many: BTreeMap<_, _> = (0..=MAX_TAGS).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(tags(&many).is_err());
        assert!(display_name("line\nbreak").is_err());
    }
}
