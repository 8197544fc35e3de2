//! Exchanges and their routing rules: direct, fanout, topic and headers, with RabbitMQ's
//! semantics. Bindings are kept by routing key so a direct exchange routes with one map
//! lookup; topic and headers exchanges test each of their own bindings.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};

use super::policy::Policy;

/// The routing rule of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding sends matching messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Queue(String),
    Exchange(String),
}

/// One binding of an exchange, minus its routing key (the map key).
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub destination: Destination,
    pub arguments: FieldTable,
}

/// A declared exchange.
#[derive(Debug)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// The vhost's policy that matches the exchange, if any.
    pub policy: Option<Arc<Policy>>,
    /// Bindings by routing key.
    bindings: HashMap<String, Vec<Binding>>,
}

impl Exchange {
    pub fn new(name: &str, kind: ExchangeKind) -> Self {
        Exchange {
            name: name.to_string(),
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
            policy: None,
            bindings: HashMap::new(),
        }
    }

    /// Where messages its bindings take nowhere go: its `alternate-exchange` argument,
    /// else its policy's (RabbitMQ's precedence).
    pub fn alternate(&self) -> Option<&str> {
        match self.arguments.inner().get("alternate-exchange") {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
            _ => self
                .policy
                .as_ref()
                .and_then(|p| p.effect.alternate_exchange.as_deref()),
        }
    }

    /// Every binding with its routing key.
    pub fn bindings(&self) -> impl Iterator<Item = (&str, &Binding)> {
        self.bindings
            .iter()
            .flat_map(|(key, list)| list.iter().map(move |b| (key.as_str(), b)))
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.is_empty()
    }

    /// Adds a binding; binding twice with the same key and arguments changes nothing.
    pub fn bind(&mut self, key: &str, binding: Binding) {
        let list = self.bindings.entry(key.to_string()).or_default();
        if !list.contains(&binding) {
            list.push(binding);
        }
    }

    pub fn has_binding(&self, key: &str, binding: &Binding) -> bool {
        self.bindings
            .get(key)
            .is_some_and(|list| list.contains(binding))
    }

    pub fn unbind(&mut self, key: &str, binding: &Binding) {
        if let Some(list) = self.bindings.get_mut(key) {
            list.retain(|b| b != binding);
            if list.is_empty() {
                self.bindings.remove(key);
            }
        }
    }

    /// Removes every binding to `destination`; true if there was one.
    pub fn unbind_all(&mut self, destination: &Destination) -> bool {
        let mut removed = false;
        self.bindings.retain(|_, list| {
            let before = list.len();
            list.retain(|b| &b.destination != destination);
            removed |= list.len() != before;
            !list.is_empty()
        });
        removed
    }

    /// Calls `found` with each destination a message with this key and headers reaches
    /// (possibly more than once; the caller removes duplicates).
    pub fn route(
        &self,
        key: &str,
        headers: Option<&FieldTable>,
        mut found: impl FnMut(&Destination),
    ) {
        match self.kind {
            ExchangeKind::Direct => {
                for b in self.bindings.get(key).into_iter().flatten() {
                    found(&b.destination);
                }
            }
            ExchangeKind::Fanout => {
                for b in self.bindings.values().flatten() {
                    found(&b.destination);
                }
            }
            ExchangeKind::Topic => {
                let words = topic_words(key);
                for (pattern, list) in &self.bindings {
                    if topic_matches(&topic_words(pattern), &words) {
                        for b in list {
                            found(&b.destination);
                        }
                    }
                }
            }
            ExchangeKind::Headers => {
                for b in self.bindings.values().flatten() {
                    if headers_match(&b.arguments, headers) {
                        found(&b.destination);
                    }
                }
            }
        }
    }
}

/// Words of a topic key or pattern; the empty key has none, as in RabbitMQ.
fn topic_words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Whether a topic pattern matches a key: `*` is exactly one word, `#` zero or more.
///
/// Filled in a row per pattern word (which prefixes of `words` the pattern so far
/// matches), so any pattern costs at most pattern × key words steps: backtracking over
/// patterns such as `#.*.#.*…` takes exponential time, and routing runs under the
/// broker's lock, so one such binding would stall every connection.
fn topic_matches(pattern: &[&str], words: &[&str]) -> bool {
    let mut reach = vec![false; words.len() + 1];
    let mut next = vec![false; words.len() + 1];
    reach[0] = true;
    for &part in pattern {
        next[0] = part == "#" && reach[0];
        for j in 1..=words.len() {
            next[j] = match part {
                // Zero words (as far as the previous part reached) or one more.
                "#" => reach[j] || next[j - 1],
                "*" => reach[j - 1],
                literal => reach[j - 1] && words[j - 1] == literal,
            };
        }
        std::mem::swap(&mut reach, &mut next);
        if !reach.contains(&true) {
            return false;
        }
    }
    reach[words.len()]
}

/// Equal as RabbitMQ's headers exchange compares, with Erlang's `==` on the decoded
/// values: numbers of any AMQP type by value, timestamps among them (a byte 1 binding
/// matches a long 1 or a double 1.0); short, long strings and byte arrays, all Erlang
/// binaries, by their bytes; anything else by type and value.
fn same_header_value(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (binary(a), binary(b)) {
        return x == y;
    }
    match (number(a), number(b)) {
        (Some(Number::Int(x)), Some(Number::Int(y))) => x == y,
        (Some(x), Some(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn binary(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Number {
    Int(i128),
    Float(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::Int(n) => n as f64,
            Number::Float(f) => f,
        }
    }
}

fn number(v: &AMQPValue) -> Option<Number> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => Number::Int(i128::from(*n)),
        AMQPValue::ShortShortUInt(n) => Number::Int(i128::from(*n)),
        AMQPValue::ShortInt(n) => Number::Int(i128::from(*n)),
        AMQPValue::ShortUInt(n) => Number::Int(i128::from(*n)),
        AMQPValue::LongInt(n) => Number::Int(i128::from(*n)),
        AMQPValue::LongUInt(n) => Number::Int(i128::from(*n)),
        AMQPValue::LongLongInt(n) => Number::Int(i128::from(*n)),
        AMQPValue::Timestamp(t) => Number::Int(i128::from(*t)),
        AMQPValue::Float(f) => Number::Float(f64::from(*f)),
        AMQPValue::Double(f) => Number::Float(*f),
        _ => return None,
    })
}

/// RabbitMQ's headers matching: `x-match` is `all` (default) or `any`, with `-with-x`
/// variants that also compare `x-` headers; otherwise binding arguments starting with
/// `x-` are ignored. A void binding value only asks for the header to be present.
fn headers_match(binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = match binding.inner().get("x-match") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_string(),
        _ => "all".to_string(),
    };
    let (any, with_x) = match mode.as_str() {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty).inner();
    let mut wanted = binding
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")))
        .map(|(k, v)| match (headers.get(k), v) {
            (None, _) => false,
            (Some(_), AMQPValue::Void) => true,
            (Some(actual), expected) => same_header_value(actual, expected),
        });
    if any {
        wanted.any(|ok| ok)
    } else {
        wanted.all(|ok| ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, key: &str) -> bool {
        topic_matches(&topic_words(pattern), &topic_words(key))
    }

    #[test]
    fn topic_star_is_exactly_one_word() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*.c", "a.c"));
        assert!(!matches("a.*.c", "a.b.b.c"));
        assert!(matches("*", "a"));
        assert!(!matches("*", ""));
        assert!(!matches("*", "a.b"));
        assert!(matches("a.*", "a."));
    }

    #[test]
    fn topic_hash_is_zero_or_more_words() {
        assert!(matches("#", ""));
        assert!(matches("#", "a.b.c"));
        assert!(matches("a.#", "a"));
        assert!(matches("a.#", "a.b.c"));
        assert!(!matches("a.#", "b.a"));
        assert!(matches("#.c", "c"));
        assert!(matches("#.c", "a.b.c"));
        assert!(!matches("#.c", "a.b.c.d"));
        assert!(matches("a.#.c", "a.c"));
        assert!(matches("a.#.c", "a.x.y.c"));
        assert!(matches("#.#", "a"));
        assert!(matches("a.#.#.b", "a.b"));
        assert!(matches("#.*", "a.b"));
        assert!(!matches("#.*", ""));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
    }

    #[test]
    fn many_hashes_cost_pattern_times_key_words() {
        // Backtracking tries about 60^12 ways to split this key before it gives up.
        let pattern = format!("{}z", "#.*.".repeat(12));
        let key = ["a"; 60].join(".");
        assert!(!matches(&pattern, &key));
        assert!(matches(&pattern, &format!("{key}.z")));
        assert!(!matches(&pattern, &["a"; 11].join(".")));
    }

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    #[test]
    fn headers_all_any_and_x_keys() {
        let all = table(&[("a", s("1")), ("b", s("2"))]);
        let any = table(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]);
        let msg = table(&[("a", s("1")), ("b", s("3"))]);
        assert!(!headers_match(&all, Some(&msg)));
        assert!(headers_match(&any, Some(&msg)));
        assert!(headers_match(
            &all,
            Some(&table(&[("a", s("1")), ("b", s("2")), ("c", s("9"))]))
        ));
        assert!(!headers_match(&any, None));
        assert!(
            headers_match(&table(&[]), None),
            "empty all matches everything"
        );
        let ignored = table(&[("x-match", s("all")), ("x-other", s("z")), ("a", s("1"))]);
        assert!(headers_match(&ignored, Some(&msg)));
        let with_x = table(&[("x-match", s("all-with-x")), ("x-other", s("z"))]);
        assert!(!headers_match(&with_x, Some(&msg)));
        let present = table(&[("a", AMQPValue::Void)]);
        assert!(headers_match(&present, Some(&msg)));
    }

    #[test]
    fn direct_routes_by_key_and_fanout_ignores_it() {
        let q = |n: &str| Binding {
            destination: Destination::Queue(n.into()),
            arguments: FieldTable::default(),
        };
        let mut direct = Exchange::new("d", ExchangeKind::Direct);
        direct.bind("k", q("q1"));
        direct.bind("k", q("q1"));
        direct.bind("other", q("q2"));
        let mut got = Vec::new();
        direct.route("k", None, |d| got.push(d.clone()));
        assert_eq!(got, vec![Destination::Queue("q1".into())]);
        let mut fanout = Exchange::new("f", ExchangeKind::Fanout);
        fanout.bind("x", q("q1"));
        fanout.bind("y", q("q2"));
        let mut got = 0;
        fanout.route("zzz", None, |_| got += 1);
        assert_eq!(got, 2);
        assert!(fanout.unbind_all(&Destination::Queue("q1".into())));
        assert!(fanout.has_bindings());
    }
}
