//! The layering itself: TOML text into a table, `MIAUFLIX_*` values into TOML values, a
//! dotted key into a nested table. `Config::load` merges every layer with these before it
//! deserializes once.

/// Why a layer could not be merged. `Display` is the rest of the configuration error's line.
#[derive(Debug, thiserror::Error)]
pub(super) enum LayerError {
    /// TOML syntax, with the line it is on when the parser says.
    #[error("{}{}", .line.map(|l| format!("line {l}: ")).unwrap_or_default(), .source.message().trim().replace('\n', " "))]
    Syntax {
        line: Option<usize>,
        #[source]
        source: toml::de::Error,
    },
    #[error("empty key")]
    EmptyKey,
    #[error("malformed key `{0}`")]
    MalformedKey(String),
    #[error("`{part}` is not a table, cannot set `{dotted}`")]
    NotATable { part: String, dotted: String },
}

pub(super) fn parse_toml(text: &str) -> Result<toml::Table, LayerError> {
    text.parse::<toml::Table>().map_err(|source| {
        let line = source.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        LayerError::Syntax { line, source }
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

pub(super) fn set_path(table: &mut toml::Table, dotted: &str, value: toml::Value) -> Result<(), LayerError> {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().ok_or(LayerError::EmptyKey)?;
    if last.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(LayerError::MalformedKey(dotted.to_string()));
    }
    let mut cur = table;
    for part in parts {
        let entry = cur.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(LayerError::NotATable { part: part.to_string(), dotted: dotted.to_string() }),
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}
