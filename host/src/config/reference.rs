//! The config's JSON Schema and its Markdown reference, both made from the
//! config structs themselves (their serde attributes and doc comments), so
//! the reference in `docs/configuration.md` cannot drift from the code:
//! `switchyard config reference` writes it and a test compares the two.

use serde_json::{Map, Value};

use super::Config;

/// The JSON Schema of a config file, for editors and for checking configs
/// before they reach a host.
pub fn schema() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap_or(Value::Null);
    if let Some(root) = schema.as_object_mut() {
        root.insert("title".into(), Value::String("Switchyard config".into()));
    }
    schema
}

/// The configuration reference in Markdown: every table of the config, with
/// each field's type, default and description.
pub fn reference() -> String {
    let schema = schema();
    let empty = Map::new();
    let defs = schema.get("$defs").and_then(Value::as_object).unwrap_or(&empty);
    let mut out = String::from(
        "# Configuration reference\n\n\
         Every table and field of a `switchyard.toml`, generated from the config\n\
         structs' own doc comments by `switchyard config reference`; `switchyard\n\
         config schema` writes the same as a JSON Schema, for editors. Unknown\n\
         fields are refused. Any string may come from the environment (`${NAME}`)\n\
         or a file (`file:<path>`).\n",
    );
    section(&mut out, "Config", "The file itself.", &schema);
    for (name, def) in defs {
        let description = def.get("description").and_then(Value::as_str).unwrap_or("");
        section(&mut out, name, description, def);
    }
    out
}

/// One type: its description, then its fields or its variants.
fn section(out: &mut String, name: &str, description: &str, def: &Value) {
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(&format!("## {name}\n\n"));
    if !description.is_empty() {
        out.push_str(&format!("{}\n\n", one_line(description)));
    }
    if let Some(variants) = def.get("oneOf").and_then(Value::as_array) {
        for variant in variants {
            variant_section(out, variant);
        }
        return;
    }
    if let Some(values) = def.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", v.as_str().unwrap_or_default())).collect();
        out.push_str(&format!("One of {}.\n", values.join(", ")));
        return;
    }
    if let Some(properties) = def.get("properties").and_then(Value::as_object) {
        fields(out, def, properties);
    }
}

/// The table of a struct's fields.
fn fields(out: &mut String, def: &Value, properties: &Map<String, Value>) {
    let required: Vec<&str> = def
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("| field | type | default | description |\n|---|---|---|---|\n");
    for (field, property) in properties {
        let default = match property.get("default") {
            Some(Value::Null) => "none".into(),
            Some(value) => format!("`{value}`"),
            None if required.contains(&field.as_str()) => "required".into(),
            None => "none".into(),
        };
        let description = property.get("description").and_then(Value::as_str).unwrap_or("");
        out.push_str(&format!(
            "| `{field}` | {} | {} | {} |\n",
            type_of(property),
            cell(&default),
            cell(&one_line(description))
        ));
    }
}

/// A variant of an enum: a plain value, or a table chosen by its tag, with
/// the table's own fields.
fn variant_section(out: &mut String, variant: &Value) {
    let description = variant.get("description").and_then(Value::as_str).map(one_line).unwrap_or_default();
    if let Some(value) = variant.get("const") {
        out.push_str(&format!("- `{value}`: {description}\n"));
        return;
    }
    let empty = Map::new();
    let properties = variant.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let tag = properties.iter().find_map(|(k, v)| v.get("const").map(|c| format!("`{k} = {c}`")));
    out.push_str(&format!("### {}\n\n", tag.unwrap_or_else(|| type_of(variant))));
    if !description.is_empty() {
        out.push_str(&format!("{description}\n\n"));
    }
    let own: Map<String, Value> =
        properties.iter().filter(|(_, v)| v.get("const").is_none()).map(|(k, v)| (k.clone(), v.clone())).collect();
    if !own.is_empty() {
        fields(out, variant, &own);
        out.push('\n');
    }
}

/// A property's type, in words, with links to the types it names.
fn type_of(property: &Value) -> String {
    if let Some(reference) = property.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("[{name}](#{})", name.to_lowercase());
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = property.get(key).and_then(Value::as_array) {
            let named: Vec<String> =
                options.iter().filter(|o| o.get("type") != Some(&Value::from("null"))).map(type_of).collect();
            return named.join(" or ");
        }
    }
    if let Some(values) = property.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().filter(|v| !v.is_null()).map(|v| format!("`{v}`")).collect();
        return values.join(" or ");
    }
    let types: Vec<&str> = match property.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
        _ => vec![],
    };
    match types.first().copied() {
        Some("array") => format!("list of {}", property.get("items").map(type_of).unwrap_or_else(|| "values".into())),
        Some("object") => match property.get("additionalProperties") {
            Some(values) if values.is_object() => format!("table of {}", type_of(values)),
            _ => "table".into(),
        },
        Some("integer") => "integer".into(),
        Some(other) => other.to_string(),
        None => "any".into(),
    }
}

/// Doc comment lines joined into one paragraph, with rustdoc's links to
/// other items left as plain code.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace("[`", "`").replace("`]", "`")
}

/// Text safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_names_every_source_type_and_documents_every_field() {
        let text = reference();
        for tag in ["\"amqp\"", "\"nats\"", "\"jetstream\"", "\"kafka\"", "\"redis\"", "\"rocketmq\"", "\"file\""] {
            assert!(text.contains(&format!("### `type = {tag}`")), "no source type {tag} in:\n{text}");
        }
        for line in text.lines().filter(|l| l.starts_with("| `")) {
            assert!(!line.trim_end().ends_with("|  |"), "a field without a description: {line}");
        }
        assert!(text.contains("| `name_server` | string | required |"), "{text}");
    }
}
