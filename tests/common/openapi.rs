//! The admin API's OpenAPI document as a test oracle: a check of the
//! document itself, a validator for the part of JSON Schema it uses, and a
//! check of one admin answer against it.
//!
//! Supported schema keywords: `type` (a name or a list of names, `null`
//! included), `properties`, `required`, `additionalProperties`, `items`,
//! `enum`, `oneOf`, `anyOf`, `$ref` (local), `minimum`, `maximum`; `format`,
//! `description` and `title` are read as notes. Any other keyword is a
//! document error, so the document cannot rely on a rule nobody checks.

use std::sync::OnceLock;

use serde_json::{Map, Value};

/// The document, parsed once per test binary.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        serde_json::from_str(switchyard::admin::endpoints::OPENAPI)
            .unwrap_or_else(|e| panic!("the OpenAPI document is not JSON: {e}"))
    })
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
const TYPES: [&str; 7] = [
    "null", "boolean", "object", "array", "number", "integer", "string",
];
const NOTES: [&str; 3] = ["description", "title", "format"];

/// Every problem of the document (empty when it is sound).
pub fn document_problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    match doc["openapi"].as_str() {
        Some(v) if v.starts_with("3.1.") => {}
        other => problems.push(format!("openapi: must be 3.1.x, is {other:?}")),
    }
    for field in ["title", "version"] {
        if !doc["info"][field].is_string() {
            problems.push(format!("info.{field}: required string"));
        }
    }
    let Some(paths) = doc["paths"].as_object() else {
        problems.push("paths: required object".into());
        return problems;
    };
    walk_refs(doc, doc, "#", &mut problems);
    for (path, item) in paths {
        if !path.starts_with('/') {
            problems.push(format!("paths.{path}: must start with /"));
        }
        let mut operations = 0;
        let declared = |params: &Value| -> Vec<String> {
            params
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| resolve(doc, p))
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect()
        };
        let path_level = declared(&item["parameters"]);
        let wanted: Vec<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_string)
            .collect();
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            operations += 1;
            let at = format!("paths.{path}.{method}");
            let mut names = path_level.clone();
            names.extend(declared(&operation["parameters"]));
            for name in &wanted {
                if !names.contains(name) {
                    problems.push(format!("{at}: path parameter `{name}` is not declared"));
                }
            }
            for name in &names {
                if !wanted.contains(name) {
                    problems.push(format!("{at}: parameter `{name}` is not in the path"));
                }
            }
            for parameter in operation["parameters"]
                .as_array()
                .into_iter()
                .chain(item["parameters"].as_array())
                .flatten()
            {
                let parameter = resolve(doc, parameter);
                if !parameter["name"].is_string()
                    || !["path", "query", "header", "cookie"]
                        .contains(&parameter["in"].as_str().unwrap_or(""))
                {
                    problems.push(format!("{at}: a parameter needs `name` and a valid `in`"));
                }
                if parameter["in"] == "path" && parameter["required"] != true {
                    problems.push(format!("{at}: path parameters must be required"));
                }
                schema_problems(
                    doc,
                    &parameter["schema"],
                    &format!("{at}.parameters"),
                    &mut problems,
                );
            }
            if let Some(body) = operation.get("requestBody") {
                for (media, content) in body["content"].as_object().into_iter().flatten() {
                    schema_problems(
                        doc,
                        &content["schema"],
                        &format!("{at}.requestBody.{media}"),
                        &mut problems,
                    );
                }
            }
            match operation["responses"].as_object() {
                Some(responses) if !responses.is_empty() => {
                    for (code, response) in responses {
                        response_problems(
                            doc,
                            response,
                            &format!("{at}.responses.{code}"),
                            &mut problems,
                        );
                        if code.len() != 3 || !code.chars().all(|c| c.is_ascii_digit()) {
                            problems.push(format!("{at}.responses.{code}: not a status code"));
                        }
                    }
                }
                _ => problems.push(format!("{at}: has no responses")),
            }
        }
        if operations == 0 {
            problems.push(format!("paths.{path}: has no operations"));
        }
    }
    for (name, response) in doc["components"]["responses"]
        .as_object()
        .into_iter()
        .flatten()
    {
        response_problems(
            doc,
            response,
            &format!("components.responses.{name}"),
            &mut problems,
        );
    }
    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        schema_problems(
            doc,
            schema,
            &format!("components.schemas.{name}"),
            &mut problems,
        );
    }
    problems
}

fn response_problems(doc: &Value, response: &Value, at: &str, problems: &mut Vec<String>) {
    let response = resolve(doc, response);
    if !response["description"].is_string() {
        problems.push(format!("{at}: a response needs a description"));
    }
    for (media, content) in response["content"].as_object().into_iter().flatten() {
        schema_problems(doc, &content["schema"], &format!("{at}.{media}"), problems);
    }
    for (name, header) in response["headers"].as_object().into_iter().flatten() {
        schema_problems(
            doc,
            &header["schema"],
            &format!("{at}.headers.{name}"),
            problems,
        );
    }
}

/// Every `$ref` under `value` must point at something.
fn walk_refs(doc: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(target) = map.get("$ref") {
                if target.as_str().and_then(|t| pointer(doc, t)).is_none() {
                    let target = target.as_str().unwrap_or("(not a string)");
                    problems.push(format!("{at}: $ref {target} does not resolve"));
                }
            }
            for (key, child) in map {
                walk_refs(doc, child, &format!("{at}/{key}"), problems);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk_refs(doc, child, &format!("{at}/{i}"), problems);
            }
        }
        _ => {}
    }
}

fn pointer<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// `value`, or what its `$ref` points at.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    let mut value = value;
    // Bounded: a chain of references longer than this is a loop.
    for _ in 0..16 {
        match value["$ref"].as_str().and_then(|r| pointer(doc, r)) {
            Some(target) => value = target,
            None => return value,
        }
    }
    value
}

/// Problems of one schema, for the supported subset.
fn schema_problems(doc: &Value, schema: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        problems.push(format!("{at}: a schema must be an object"));
        return;
    };
    for (key, value) in map {
        let fine = match key.as_str() {
            "$ref" => value.as_str().is_some_and(|r| pointer(doc, r).is_some()),
            "type" => match value {
                Value::String(t) => TYPES.contains(&t.as_str()),
                Value::Array(ts) => {
                    !ts.is_empty()
                        && ts
                            .iter()
                            .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t)))
                }
                _ => false,
            },
            "properties" => match value.as_object() {
                Some(properties) => {
                    for (name, property) in properties {
                        schema_problems(
                            doc,
                            property,
                            &format!("{at}.properties.{name}"),
                            problems,
                        );
                    }
                    true
                }
                None => false,
            },
            "required" => value.as_array().is_some_and(|names| {
                names.iter().all(|n| {
                    n.as_str()
                        .is_some_and(|n| map.get("properties").is_some_and(|p| p.get(n).is_some()))
                })
            }),
            "additionalProperties" => {
                if value.is_object() {
                    schema_problems(doc, value, &format!("{at}.additionalProperties"), problems);
                }
                value.is_boolean() || value.is_object()
            }
            "items" => {
                schema_problems(doc, value, &format!("{at}.items"), problems);
                true
            }
            "enum" => value.as_array().is_some_and(|v| !v.is_empty()),
            "oneOf" | "anyOf" => match value.as_array() {
                Some(options) if !options.is_empty() => {
                    for (i, option) in options.iter().enumerate() {
                        schema_problems(doc, option, &format!("{at}.{key}[{i}]"), problems);
                    }
                    true
                }
                _ => false,
            },
            "minimum" | "maximum" => value.is_number(),
            note if NOTES.contains(&note) => value.is_string(),
            _ => {
                problems.push(format!(
                    "{at}: keyword `{key}` is not supported by the validator"
                ));
                true
            }
        };
        if !fine {
            problems.push(format!("{at}.{key}: malformed ({value})"));
        }
    }
}

/// Checks `value` against `schema`; the first mismatch, with its location.
pub fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = pointer(doc, reference)
            .ok_or_else(|| format!("{at}: $ref {reference} does not resolve"))?;
        return validate(doc, target, value, at);
    }
    if let Some(kinds) = schema.get("type") {
        let kinds: Vec<&str> = match kinds {
            Value::String(k) => vec![k.as_str()],
            Value::Array(ks) => ks.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !kinds.iter().any(|kind| is_type(value, kind)) {
            return Err(format!("{at}: expected {kinds:?}, got {value}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if number < min {
                return Err(format!("{at}: {number} is below the minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if number > max {
                return Err(format!("{at}: {number} is above the maximum {max}"));
            }
        }
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let passing: Vec<usize> = (0..options.len())
            .filter(|&i| validate(doc, &options[i], value, at).is_ok())
            .collect();
        if passing.len() != 1 {
            let why: Vec<String> = options
                .iter()
                .filter_map(|o| validate(doc, o, value, at).err())
                .collect();
            return Err(format!(
                "{at}: matches {} of the oneOf options, not exactly one ({})",
                passing.len(),
                why.join("; ")
            ));
        }
    }
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        if !options.iter().any(|o| validate(doc, o, value, at).is_ok()) {
            return Err(format!("{at}: matches none of the anyOf options: {value}"));
        }
    }
    if let Value::Object(object) = value {
        validate_object(doc, schema, object, at)?;
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            validate(doc, item_schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn validate_object(
    doc: &Value,
    schema: &Value,
    object: &Map<String, Value>,
    at: &str,
) -> Result<(), String> {
    let empty = Map::new();
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = name.as_str().unwrap_or_default();
        if !object.contains_key(name) {
            return Err(format!("{at}: required field `{name}` is missing"));
        }
    }
    for (name, field) in object {
        let here = format!("{at}.{name}");
        match (properties.get(name), schema.get("additionalProperties")) {
            (Some(property), _) => validate(doc, property, field, &here)?,
            (None, Some(Value::Bool(false))) => {
                return Err(format!("{here}: field not in the document"))
            }
            (None, Some(extra @ Value::Object(_))) => validate(doc, extra, field, &here)?,
            (None, _) => {}
        }
    }
    Ok(())
}

fn is_type(value: &Value, kind: &str) -> bool {
    match kind {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "string" => value.is_string(),
        _ => false,
    }
}

/// The document's path template matching `path` (query ignored, each
/// segment percent-decoded like the server does); literal segments win
/// over `{parameters}`.
pub fn template_of(doc: &Value, path: &str) -> Option<String> {
    let path = path
        .split('?')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    let segments: Vec<String> = path.split('/').skip(1).map(decode).collect();
    let mut best: Option<(String, usize)> = None;
    for template in doc["paths"].as_object()?.keys() {
        let parts: Vec<&str> = template
            .split('/')
            .skip(1)
            .filter(|s| !s.is_empty())
            .collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut literals = 0;
        let matches = parts.iter().zip(&segments).all(|(t, s)| {
            if t.starts_with('{') {
                !s.is_empty()
            } else {
                literals += 1;
                t == s
            }
        });
        if matches && best.as_ref().is_none_or(|(_, most)| literals > *most) {
            best = Some((template.clone(), literals));
        }
    }
    best.map(|(template, _)| template)
}

fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks one admin answer against the document: the status is declared
/// for the path and method, the content type is one the response lists,
/// required headers are there, and a JSON body fits the schema. `HEAD` is
/// checked like `GET` without a body. Returns the path template checked.
pub fn check_answer(
    method: &str,
    path: &str,
    status: u16,
    headers: &http::HeaderMap,
    body: &str,
) -> Result<String, String> {
    let doc = document();
    let call = format!("{method} {path} -> {status}");
    let components = &doc["components"]["responses"];
    let Some(template) = template_of(doc, path) else {
        // Undocumented paths must be refused as unknown (or as malformed).
        let expected = match status {
            404 => &components["NoEndpoint"],
            400 => &components["BadPath"],
            _ => return Err(format!("{call}: the path is not in the document")),
        };
        check_response(doc, expected, headers, body, method == "HEAD")
            .map_err(|e| format!("{call}: {e}"))?;
        return Ok(String::new());
    };
    let item = &doc["paths"][&template];
    let operation_method = if method == "HEAD" { "get" } else { method };
    let operation_method = operation_method.to_ascii_lowercase();
    let Some(operation) = item.get(&operation_method) else {
        if status != 405 {
            return Err(format!(
                "{call}: {method} is not documented on {template}, so only 405 may answer it"
            ));
        }
        check_response(
            doc,
            &components["MethodNotAllowed"],
            headers,
            body,
            method == "HEAD",
        )
        .map_err(|e| format!("{call}: {e}"))?;
        return Ok(template);
    };
    let Some(response) = operation["responses"].get(status.to_string()) else {
        return Err(format!(
            "{call}: status {status} is not declared for {operation_method} {template}\n{body}"
        ));
    };
    check_response(doc, response, headers, body, method == "HEAD")
        .map_err(|e| format!("{call} ({template}): {e}\n{body}"))?;
    Ok(template)
}

fn check_response(
    doc: &Value,
    response: &Value,
    headers: &http::HeaderMap,
    body: &str,
    head: bool,
) -> Result<(), String> {
    let response = resolve(doc, response);
    for (name, header) in response["headers"].as_object().into_iter().flatten() {
        if header["required"] == true && !headers.contains_key(name.as_str()) {
            return Err(format!("the required header {name} is missing"));
        }
    }
    let Some(content) = response["content"].as_object() else {
        return if body.is_empty() {
            Ok(())
        } else {
            Err("the response declares no body, but one came".into())
        };
    };
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or("no Content-Type")?;
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let Some(media) = content.get(&essence) else {
        let declared: Vec<&String> = content.keys().collect();
        return Err(format!(
            "Content-Type {content_type} is not one of {declared:?}"
        ));
    };
    if head {
        return if body.is_empty() {
            Ok(())
        } else {
            Err("HEAD answered with a body".into())
        };
    }
    let schema = &media["schema"];
    if essence == "application/json" {
        let value: Value =
            serde_json::from_str(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        validate(doc, schema, &value, "body")
    } else {
        validate(doc, schema, &Value::String(body.to_string()), "body")
    }
}

/// Panics (fails the test) when an answer does not fit the document.
pub fn assert_answer(method: &str, path: &str, status: u16, headers: &http::HeaderMap, body: &str) {
    if let Err(problem) = check_answer(method, path, status, headers, body) {
        panic!("the admin API broke its OpenAPI contract: {problem}");
    }
}
