//! Where a config string may come from instead of the file itself, so that
//! passwords and tokens stay out of it: `${NAME}` anywhere in a string is
//! the environment variable `NAME`, and a string that is all `file:<path>`
//! is that file's contents (a Kubernetes Secret mounted as a file), without
//! its trailing newline. `$${` writes a literal `${`.
//!
//! Every value taken this way is returned as a secret, so the binary can
//! keep it out of what it prints and logs.

use std::path::Path;

/// The config's tree with every `${NAME}` and `file:` string replaced, and
/// the values that replaced them. Errors name the field and the variable or
/// file, never a value.
pub fn expand(value: &mut toml::Value, field: &str, base: &Path) -> Result<Vec<String>, (String, String)> {
    let mut secrets = Vec::new();
    walk(value, field, base, &mut secrets)?;
    Ok(secrets)
}

/// Whether `text` holds anything [`expand`] would replace.
pub fn mentions(text: &str) -> bool {
    text.contains("${") || text.contains("\"file:") || text.contains("'file:")
}

fn walk(value: &mut toml::Value, field: &str, base: &Path, secrets: &mut Vec<String>) -> Result<(), (String, String)> {
    match value {
        toml::Value::String(s) => {
            if let Some(new) = expand_string(s, field, base, secrets)? {
                *s = new;
            }
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, &format!("{field}[{i}]"), base, secrets)?;
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let path = if field.is_empty() { key.clone() } else { format!("{field}.{key}") };
                walk(item, &path, base, secrets)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_string(
    s: &str,
    field: &str,
    base: &Path,
    secrets: &mut Vec<String>,
) -> Result<Option<String>, (String, String)> {
    if let Some(file) = s.strip_prefix("file:") {
        let path = base.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| (field.to_string(), format!("cannot read the secret file {}: {e}", path.display())))?;
        let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string();
        secrets.push(text.clone());
        return Ok(Some(text));
    }
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let Some(end) = rest[at + 2..].find('}') else {
            return Err((field.to_string(), "`${` without its closing `}`".into()));
        };
        let name = &rest[at + 2..at + 2 + end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((field.to_string(), format!("{name:?} is not an environment variable's name")));
        }
        let value = std::env::var(name)
            .map_err(|_| (field.to_string(), format!("the environment variable {name} is not set")))?;
        secrets.push(value.clone());
        out.push_str(&value);
        rest = &rest[at + 2 + end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_one(text: &str) -> Result<(String, Vec<String>), (String, String)> {
        let mut value = toml::Value::String(text.into());
        let secrets = expand(&mut value, "f", Path::new("/"))?;
        Ok((value.as_str().unwrap_or_default().to_string(), secrets))
    }

    #[test]
    fn variables_and_files_are_replaced_and_reported_as_secrets() {
        // SAFETY: the variable is this test's own; no other test reads it.
        unsafe { std::env::set_var("SWITCHYARD_TEST_SECRET_A", "p@ss") };
        let (text, secrets) = expand_one("amqp://user:${SWITCHYARD_TEST_SECRET_A}@host/$${literal}").unwrap();
        assert_eq!(text, "amqp://user:p@ss@host/${literal}");
        assert_eq!(secrets, ["p@ss"]);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
        let (text, secrets) = expand_one(&format!("file:{}", dir.path().join("token").display())).unwrap();
        assert_eq!((text.as_str(), secrets), ("t0ken", vec!["t0ken".to_string()]));
        assert_eq!(expand_one("plain").unwrap(), ("plain".to_string(), vec![]));
    }

    #[test]
    fn a_missing_variable_or_file_names_the_field_and_the_source() {
        let err = expand_one("${SWITCHYARD_TEST_SURELY_UNSET}").unwrap_err();
        assert_eq!(err, ("f".into(), "the environment variable SWITCHYARD_TEST_SURELY_UNSET is not set".into()));
        let err = expand_one("file:/nonexistent/secret").unwrap_err();
        assert!(err.1.starts_with("cannot read the secret file /nonexistent/secret"), "{err:?}");
        assert!(expand_one("${unclosed").unwrap_err().1.contains("closing"));
        assert!(expand_one("${not a name}").unwrap_err().1.contains("is not an environment variable"));
    }
}
