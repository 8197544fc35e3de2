//! The query parameters with which RabbitMQ's management API shapes any JSON answer:
//! `columns=name,message_stats.publish` keeps only those keys (nested ones by dotted
//! path), `sort=KEY` and `sort_reverse=true` order a list (after the vhost and name),
//! and `page=N` (with `page_size`, at most 500, and a `name` filter, a substring or, with
//! `use_regex=true`, a regular expression, both case-insensitive) pages it. They are
//! what `rabbitmqadmin list queues name messages`, `-S`/`-R` and dashboards send.
//! Applied to a handler's answer after the fact, so no handler needs to know them;
//! answers without those parameters pass untouched.

use std::cmp::Ordering;

use axum::body::{Body, to_bytes};
use axum::extract::{Query, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The largest answer reshaped (far above any listing's size); a larger one is a 500
/// that says so, as its body is spent by then.
const MAX_BODY: usize = 256 << 20;
/// RabbitMQ's default and largest page sizes.
const PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 500;

/// The shaping a request asks for.
#[derive(Debug, Default)]
struct Shape {
    /// Each column as its path of keys.
    columns: Option<Vec<Vec<String>>>,
    sort: Option<String>,
    reverse: bool,
    page: Option<Page>,
}

#[derive(Debug)]
struct Page {
    number: usize,
    size: usize,
    name: Option<String>,
    regex: bool,
}

/// Reshapes the answer to a request that asks for it.
pub async fn reply(request: Request, next: Next) -> Response {
    let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(request.uri()) else {
        return next.run(request).await;
    };
    let shape = match parse(pairs) {
        Ok(shape) => shape,
        Err(refusal) => return refused(refusal),
    };
    if shape.columns.is_none() && shape.sort.is_none() && !shape.reverse && shape.page.is_none() {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() != StatusCode::OK || !is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "answer too large to shape",
        )
            .into_response();
    };
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    match shape.apply(value) {
        Ok(shaped) => axum::Json(shaped).into_response(),
        Err(refusal) => refused(refusal),
    }
}

/// A 400 with RabbitMQ's error kind and reason.
type Refusal = (&'static str, String);

fn refused((kind, reason): Refusal) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": kind, "reason": reason})),
    )
        .into_response()
}

/// Reads the shaping parameters of a query's pairs; Err is RabbitMQ's refusal.
fn parse(pairs: Vec<(String, String)>) -> Result<Shape, Refusal> {
    let mut shape = Shape::default();
    let (mut page, mut size, mut name, mut regex) = (None, None, None, false);
    for (key, value) in pairs {
        match key.as_str() {
            "columns" => {
                let columns = value
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(|c| c.split('.').map(str::to_string).collect())
                    .collect();
                shape.columns = Some(columns);
            }
            "sort" => shape.sort = Some(value),
            "sort_reverse" => shape.reverse = value == "true",
            "page" => page = Some(value),
            "page_size" => size = Some(value),
            "name" => name = Some(value),
            "use_regex" => regex = value == "true",
            _ => {}
        }
    }
    if let Some(page) = page {
        let invalid = || {
            let reason = format!(
                "Invalid pagination parameters: page number {}, page size {}",
                page,
                size.as_deref().unwrap_or("undefined")
            );
            ("invalid_pagination_parameters", reason)
        };
        let number = page.parse::<usize>().ok().filter(|n| *n > 0);
        let per_page = match &size {
            None => Some(PAGE_SIZE),
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n)),
        };
        let (Some(number), Some(size)) = (number, per_page) else {
            return Err(invalid());
        };
        shape.page = Some(Page {
            number,
            size,
            name: name.filter(|n| !n.is_empty()),
            regex,
        });
    }
    Ok(shape)
}

impl Shape {
    /// Columns, then order, then the page, in RabbitMQ's order.
    fn apply(&self, value: Value) -> Result<Value, Refusal> {
        let value = match &self.columns {
            Some(columns) => keep(value, columns),
            None => value,
        };
        let Value::Array(mut items) = value else {
            return Ok(value);
        };
        let mut keys = vec!["vhost".to_string(), "name".to_string()];
        if let Some(sort) = &self.sort {
            if sort.is_empty() {
                keys.clear();
            } else {
                keys.insert(0, sort.clone());
            }
        }
        if !keys.is_empty() {
            items.sort_by(|a, b| {
                keys.iter()
                    .map(|k| compare(&dotted(a, k), &dotted(b, k)))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            });
        }
        if self.reverse {
            items.reverse();
        }
        match &self.page {
            None => Ok(Value::Array(items)),
            Some(page) => page.of(items),
        }
    }
}

impl Page {
    fn of(&self, all: Vec<Value>) -> Result<Value, Refusal> {
        let total = all.len();
        let filtered: Vec<Value> = match &self.name {
            None => all,
            Some(name) => {
                let matcher = if self.regex {
                    regex::RegexBuilder::new(name)
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| ("bad_request", format!("invalid regular expression: {e}")))?
                } else {
                    regex::RegexBuilder::new(&regex::escape(name))
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| ("bad_request", e.to_string()))?
                };
                all.into_iter()
                    .filter(|item| item["name"].as_str().is_some_and(|n| matcher.is_match(n)))
                    .collect()
            }
        };
        let offset = (self.number - 1).saturating_mul(self.size);
        if offset > filtered.len() {
            let reason = format!(
                "Page out of range, page: {} page size: {}, len: {}",
                self.number,
                self.size,
                filtered.len()
            );
            return Err(("page_out_of_range", reason));
        }
        let count = filtered.len();
        let items: Vec<Value> = filtered.into_iter().skip(offset).take(self.size).collect();
        Ok(json!({
            "total_count": total,
            "item_count": items.len(),
            "filtered_count": count,
            "page": self.number,
            "page_size": self.size,
            "page_count": count.div_ceil(self.size),
            "items": items,
        }))
    }
}

/// `value` with only `columns` (paths of keys) kept in its objects, nested ones down
/// their paths; lists are filtered item by item.
fn keep(value: Value, columns: &[Vec<String>]) -> Value {
    match value {
        Value::Object(fields) => {
            let mut out = Map::new();
            for (key, inner) in fields {
                let wanted: Vec<&Vec<String>> =
                    columns.iter().filter(|c| c.first() == Some(&key)).collect();
                if wanted.is_empty() {
                    continue;
                }
                // A column naming the key itself keeps all of it.
                let inner = if wanted.iter().any(|c| c.len() == 1) {
                    inner
                } else {
                    let deeper: Vec<Vec<String>> = wanted.iter().map(|c| c[1..].to_vec()).collect();
                    keep(inner, &deeper)
                };
                out.insert(key, inner);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(|v| keep(v, columns)).collect()),
        other => other,
    }
}

/// The value at a dotted path; a missing last key is 0 and a missing inner one an empty
/// list, as RabbitMQ reads them for sorting.
fn dotted(item: &Value, path: &str) -> Value {
    let keys: Vec<&str> = path.split('.').collect();
    let mut at = item;
    for (i, key) in keys.iter().enumerate() {
        match at.get(key) {
            Some(inner) => at = inner,
            None if i + 1 == keys.len() => return json!(0),
            None => return json!([]),
        }
    }
    at.clone()
}

/// Erlang's order of terms, as RabbitMQ sorts: numbers, then atoms (`false`, `null`
/// as `undefined`... `true`), then lists and objects, then strings.
fn compare(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::Bool(_) | Value::Null => 1,
            Value::Array(_) | Value::Object(_) => 2,
            Value::String(_) => 3,
        }
    }
    fn atom(v: &Value) -> &'static str {
        match v {
            Value::Bool(true) => "true",
            Value::Bool(false) => "false",
            _ => "undefined",
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ if rank(a) != rank(b) => rank(a).cmp(&rank(b)),
        _ if rank(a) == 1 => atom(a).cmp(atom(b)),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaped(query: &str, value: Value) -> Result<Value, Refusal> {
        let uri: axum::http::Uri = format!("/api/queues?{query}").parse().expect("uri");
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&uri).expect("query");
        parse(pairs)?.apply(value)
    }

    #[test]
    fn columns_keep_named_keys_and_dotted_paths_in_every_item() {
        let list = json!([
            {"name": "a", "vhost": "/", "messages": 3,
             "message_stats": {"publish": 5, "ack": 2}, "arguments": {}},
            {"name": "b", "vhost": "/", "messages": 1}
        ]);
        assert_eq!(
            shaped("columns=name,message_stats.publish", list),
            Ok(json!([
                {"name": "a", "message_stats": {"publish": 5}},
                {"name": "b"}
            ]))
        );
        assert_eq!(
            shaped(
                "columns=name%2Cnode",
                json!({"name": "x", "node": "n", "other": 1})
            ),
            Ok(json!({"name": "x", "node": "n"}))
        );
    }

    #[test]
    fn lists_sort_by_a_key_then_vhost_and_name_and_reverse() {
        let list = json!([
            {"name": "c", "vhost": "/", "messages": 2},
            {"name": "a", "vhost": "/", "messages": 2},
            {"name": "b", "vhost": "/", "messages": 1},
            {"name": "d", "vhost": "/"}
        ]);
        let names = |v: Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["name"].as_str().map(str::to_string))
                .collect()
        };
        // A missing number counts as 0, as in RabbitMQ.
        assert_eq!(
            names(shaped("sort=messages", list.clone()).expect("sorted")),
            ["d", "b", "a", "c"]
        );
        assert_eq!(
            names(shaped("sort=messages&sort_reverse=true", list).expect("sorted")),
            ["c", "a", "b", "d"]
        );
    }

    #[test]
    fn pages_count_filter_by_name_and_refuse_what_rabbitmq_refuses() {
        let list: Value = (0..5)
            .map(|i| json!({"name": format!("q{i}"), "vhost": "/"}))
            .chain([json!({"name": "other", "vhost": "/"})])
            .collect();
        let page = shaped("page=2&page_size=2&name=Q", list.clone()).expect("page");
        assert_eq!(
            page,
            json!({"total_count": 6, "item_count": 2, "filtered_count": 5, "page": 2,
                   "page_size": 2, "page_count": 3,
                   "items": [{"name": "q2", "vhost": "/"}, {"name": "q3", "vhost": "/"}]})
        );
        let regex = shaped("page=1&name=%5Eq%5B04%5D%24&use_regex=true", list.clone());
        assert_eq!(regex.expect("page")["filtered_count"], 2);
        let invalid = "invalid_pagination_parameters";
        assert_eq!(
            shaped("page=0", list.clone()),
            Err((
                invalid,
                "Invalid pagination parameters: page number 0, page size undefined".into()
            ))
        );
        assert_eq!(
            shaped("page=1&page_size=501", list.clone()),
            Err((
                invalid,
                "Invalid pagination parameters: page number 1, page size 501".into()
            ))
        );
        assert_eq!(
            shaped("page=5&page_size=2", list),
            Err((
                "page_out_of_range",
                "Page out of range, page: 5 page size: 2, len: 6".into()
            ))
        );
    }
}
