//! The layering itself: TOML text into a table, `MIAUFLIX_*` values into TOML values, a
//! dotted key into a nested table. `Config::load` merges every layer with these before it
//! deserializes once.

pub(super) fn parse_toml(text: &str) -> Result<toml::Table, String> {
    text.parse::<toml::Table>().map_err(|e| {
        let msg = e.message().trim().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {msg}")
            }
            None => msg,
        }
    })
}

/// An env value is read as a TOML value when it parses as one (numbers, booleans,
/// arrays), else as a plain string.
pub(super) fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

pub(super) fn set_path(table: &mut toml::Table, dotted: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().ok_or_else(|| "empty key".to_string())?;
    if last.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(format!("malformed key `{dotted}`"));
    }
    let mut cur = table;
    for part in parts {
        let entry = cur.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{part}` is not a table, cannot set `{dotted}`")),
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}
