//! The exact contract: what the validators enforce, written into the document from the same
//! constants (`skill_fleet_types::JOB_ID_PATTERN`, `MAX_LEASE_TOKEN_LEN`, …), so the document
//! cannot promise more or less than the server takes.
//!
//! utoipa derives the shapes from the wire types; this pass adds what a Rust type cannot say:
//! patterns, ranges, a fence's "both or neither", the optional bodies, optional security, and
//! the stream's events as Server-Sent Events carry them. It runs once, on the JSON of the
//! document, before it is served.

use serde_json::{Map, Value, json};
use skill_fleet_jobs::CURSOR_PATTERN;
use skill_fleet_types::{
    ARTIFACT_NAME_PATTERN, JOB_ID_PATTERN, JOB_TYPE_PATTERN, MAX_LEASE_TOKEN_LEN,
    WORKER_NAME_PATTERN,
};

/// Security that a server without a token does not need: no requirement, or the bearer token.
pub(crate) fn optional_bearer() -> Value {
    json!([{}, {"bearer": []}])
}

/// Applies the contract to the document `doc`.
pub(crate) fn apply(doc: &mut Value) {
    security(doc);
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas_contract(schemas);
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                operation_contract(path, method, operation);
            }
        }
    }
}

/// A token is needed only when the server has one: every operation that asks for the bearer
/// token also accepts none (`{}`), and says so.
fn security(doc: &mut Value) {
    doc["security"] = optional_bearer();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for operation in item.values_mut() {
                let Some(requirements) =
                    operation.get_mut("security").and_then(Value::as_array_mut)
                else {
                    continue;
                };
                let empty = json!({});
                if !requirements.is_empty() && !requirements.contains(&empty) {
                    requirements.insert(0, empty);
                }
            }
        }
    }
}

/// A whole number in `0..=u32::MAX` (attempts, page sizes).
fn u32_schema(minimum: u32) -> Value {
    json!({"type": "integer", "minimum": minimum, "maximum": u32::MAX})
}

/// Sets `key` of the property `property` of an object schema, if it has that property.
fn set_property(schema: &mut Value, property: &str, key: &str, value: Value) {
    if let Some(target) = schema
        .get_mut("properties")
        .and_then(|properties| properties.get_mut(property))
        .and_then(Value::as_object_mut)
    {
        target.insert(key.to_owned(), value);
        target.remove("format");
    }
}

/// The fence of a worker write: `attempt` and `lease_token` together or neither, never
/// `null` (as `Fence::from_fields` and the fields' deserializers check).
fn fence(schema: &mut Value) {
    set_property(schema, "attempt", "type", json!("integer"));
    set_property(schema, "lease_token", "type", json!("string"));
    fence_ranges(schema);
    schema["dependentRequired"] = json!({"attempt": ["lease_token"], "lease_token": ["attempt"]});
}

/// The ranges of a fence's two fields: an attempt is a `u32`, a lease token 1 to
/// [`MAX_LEASE_TOKEN_LEN`] characters (`Fence::from_fields`).
fn fence_ranges(schema: &mut Value) {
    set_property(schema, "attempt", "minimum", json!(0));
    set_property(schema, "attempt", "maximum", json!(u32::MAX));
    set_property(schema, "lease_token", "minLength", json!(1));
    set_property(
        schema,
        "lease_token",
        "maxLength",
        json!(MAX_LEASE_TOKEN_LEN),
    );
}

/// The limits a job's metadata may set (`JobLimits::from_metadata`): each a number above 0
/// (the warning fraction at most 1), or `null`.
fn metadata_limits(schema: &mut Value) {
    let positive = json!({"type": ["number", "null"], "exclusiveMinimum": 0});
    let fraction = json!({"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1});
    set_property(
        schema,
        "metadata",
        "properties",
        json!({
            "budget_usd": positive,
            "time_limit_seconds": positive,
            "budget_warning_fraction": fraction,
        }),
    );
}

fn schemas_contract(schemas: &mut Map<String, Value>) {
    let mut with = |name: &str, change: &dyn Fn(&mut Value)| {
        if let Some(schema) = schemas.get_mut(name) {
            change(schema);
        }
    };
    with("CreateJob", &|schema| {
        set_property(schema, "type", "pattern", json!(JOB_TYPE_PATTERN));
        set_property(schema, "id", "pattern", json!(JOB_ID_PATTERN));
        metadata_limits(schema);
    });
    with("CreateOptimization", &|schema| {
        set_property(schema, "id", "pattern", json!(JOB_ID_PATTERN));
        metadata_limits(schema);
    });
    with("ClaimRequest", &|schema| {
        set_property(
            schema,
            "types",
            "items",
            json!({"type": "string", "pattern": JOB_TYPE_PATTERN}),
        );
        set_property(schema, "worker", "pattern", json!(WORKER_NAME_PATTERN));
    });
    with("ProgressUpdate", &|schema| {
        fence(schema);
        set_property(schema, "progress", "minimum", json!(0));
        set_property(schema, "progress", "maximum", json!(1));
        set_property(schema, "cost_usd", "minimum", json!(0));
        set_property(
            schema,
            "step",
            "oneOf",
            json!([
                {"type": "string"},
                {"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX},
                {"type": "null"},
            ]),
        );
    });
    with("CompleteRequest", &fence);
    with("FailRequest", &fence);
    with("HeartbeatRequest", &fence_ranges);
    schemas.insert(
        "StreamFrame".to_owned(),
        json!({
            "type": "object",
            "description": "One Server-Sent Event of a job stream, as `text/event-stream` \
                carries it: `id:` (the state's `seq`), `data:` (one `StreamEvent` as JSON) and, \
                on the first event, `retry:` (milliseconds). Keep-alive comments carry no event.",
            "required": ["data"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "event": {"type": "string", "const": "message"},
                "retry": {"type": "integer", "minimum": 0},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": "#/components/schemas/StreamEvent"},
                },
            },
        }),
    );
}

/// Sets the schema of the parameter `name` (in `place`) of an operation.
fn parameter(operation: &mut Value, name: &str, place: &str, schema: Value) {
    let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for parameter in parameters {
        if parameter["name"] == name && parameter["in"] == place {
            parameter["schema"] = schema.clone();
        }
    }
}

fn operation_contract(path: &str, method: &str, operation: &mut Value) {
    let pattern = |pattern: &str| json!({"type": "string", "pattern": pattern});
    parameter(operation, "id", "path", pattern(JOB_ID_PATTERN));
    parameter(operation, "name", "path", pattern(ARTIFACT_NAME_PATTERN));
    parameter(operation, "type", "query", pattern(JOB_TYPE_PATTERN));
    parameter(operation, "cursor", "query", pattern(CURSOR_PATTERN));
    parameter(
        operation,
        "after",
        "query",
        json!({"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX}),
    );
    let least = if path == "/api/v1/jobs" { 1 } else { 0 };
    parameter(operation, "limit", "query", u32_schema(least));
    parameter(operation, "Skill-Fleet-Attempt", "header", u32_schema(0));
    parameter(
        operation,
        "Skill-Fleet-Lease-Token",
        "header",
        json!({"type": "string", "minLength": 1, "maxLength": MAX_LEASE_TOKEN_LEN}),
    );
    // An optional body is an absent body, not a JSON `null` (which the server refuses).
    if let Some(content) = operation
        .pointer_mut("/requestBody/content/application~1json")
        .and_then(Value::as_object_mut)
        && let Some(schema) = content.get_mut("schema")
        && let Some(branches) = schema.get("oneOf").and_then(Value::as_array)
        && branches.len() == 2
        && branches.contains(&json!({"type": "null"}))
    {
        let other = branches
            .iter()
            .find(|branch| **branch != json!({"type": "null"}))
            .cloned()
            .unwrap_or_default();
        *schema = other;
    }
    if path.ends_with("/stream")
        && method == "get"
        && let Some(events) = operation.pointer_mut("/responses/200/content/text~1event-stream")
    {
        events["schema"] = json!({"$ref": "#/components/schemas/StreamFrame"});
    }
}
