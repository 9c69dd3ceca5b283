//! The one name rule: rules and tenants are named alike, so a name is
//! safe in a URL path, a state key and a log line.

/// Check `name` against the rule; the error names the field (`field`) and
/// the value seen.
pub fn check(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: {name:?} must be 1 to 64 characters of a-z, 0-9, - and _, starting with a letter"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn names_are_lowercase_words() {
        for ok in ["a", "pr-digest", "x_1", &"a".repeat(64)] {
            assert!(check("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "1a", "-a", "a b", "a/b", "é", &"a".repeat(65)] {
            let e = check("name", bad).unwrap_err();
            assert!(e.starts_with("name: "), "{e}");
        }
    }
}
