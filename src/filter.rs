//! Payload filters on destinations: `filter = '…'`, a CEL expression (the Common
//! Expression Language of Kubernetes and Envoy, through the `cel` crate) over the event —
//! `body` (the JSON payload), `event_type` and `source` — that must be `true` for the
//! destination to get the event.
//!
//! A filter is compiled once, when the configuration is loaded (a filter that does not
//! compile, reads an unknown variable, nests one comprehension in another or is over
//! [`MAX_FILTER_BYTES`] is a configuration error with its line and column), and
//! evaluated at ingest where the outbox rows are written. An evaluation that fails
//! (a missing field, a wrong type, a body that is not JSON) is no match, with its
//! reason. Only the parts of the body a filter reads are handed to CEL: the paths it
//! selects are found once at compile time, so a filter costs about the same on a large
//! event as on a small one.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};

/// The longest filter accepted. With [`MAX_NESTING`] it bounds the depth of the syntax
/// tree, which the parser and the evaluation recurse through.
pub const MAX_FILTER_BYTES: usize = 1024;

/// The deepest nesting of brackets (`(`, `[`, `{`) accepted.
pub const MAX_NESTING: usize = 16;

/// The stack the parser gets: its recursion is deep even within the limits above.
const COMPILE_STACK_BYTES: usize = 16 << 20;

/// The variables a filter may read.
pub const VARIABLES: &[&str] = &["body", "event_type", "source"];

/// CEL's type names, which are identifiers too (`type(body.amount) == int`).
const TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// A filter that does not compile: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct CompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl CompileError {
    fn whole(message: impl Into<String>) -> Self {
        Self {
            line: 1,
            column: 1,
            message: message.into(),
        }
    }
}

/// What a filter said of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Match,
    NoMatch,
    /// The evaluation failed (no match), and why.
    Failed(String),
}

/// A compiled filter.
#[derive(Debug)]
pub struct Filter {
    program: Program,
    /// The body fields the filter reads: `None` for the whole body.
    paths: Option<Vec<Vec<String>>>,
}

/// The standard CEL environment, built once.
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

impl Filter {
    pub fn compile(text: &str) -> Result<Self, CompileError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(CompileError::whole(format!(
                "a filter is at most {MAX_FILTER_BYTES} bytes"
            )));
        }
        if text.trim().is_empty() {
            return Err(CompileError::whole("a filter must not be empty"));
        }
        check_nesting(text)?;
        let owned = text.to_string();
        let compiled = std::thread::Builder::new()
            .name("filter-compile".into())
            .stack_size(COMPILE_STACK_BYTES)
            .spawn(move || env().compile(&owned))
            .map_err(|e| CompileError::whole(format!("cannot start the compiler thread: {e}")))?
            .join()
            .map_err(|_| CompileError::whole("the filter broke the compiler"))?;
        let program = compiled.map_err(|errors| {
            let first = errors.errors.first();
            CompileError {
                // The parser's positions are (line, column), from 1.
                line: first.map_or(1, |e| usize::try_from(e.pos.0).unwrap_or(1).max(1)),
                column: first.map_or(1, |e| usize::try_from(e.pos.1).unwrap_or(1).max(1)),
                message: first.map_or_else(|| "does not compile".into(), |e| e.msg.clone()),
            }
        })?;
        let mut walk = Walk {
            text,
            source_info: program.source_info(),
            bound: Vec::new(),
            paths: Vec::new(),
            whole_body: false,
            comprehensions: 0,
        };
        walk.expr(program.expression())?;
        let paths = (!walk.whole_body).then_some(walk.paths);
        Ok(Self { program, paths })
    }

    /// Whether the event passes; `body` is its payload as JSON (`None`: not JSON).
    pub fn evaluate(&self, body: Option<&serde_json::Value>, source: &str, event_type: &str) -> Outcome {
        let mut context = Context::with_env(env().clone());
        context.add_variable_from_value("source", source);
        context.add_variable_from_value("event_type", event_type);
        let not_json = body.is_none();
        let body = match (body, &self.paths) {
            (None, _) => Value::Null,
            (Some(json), None) => to_cel(json),
            (Some(json), Some(paths)) => pruned(json, paths),
        };
        context.add_variable_from_value("body", body);
        match self.program.execute(&context) {
            Ok(Value::Bool(true)) => Outcome::Match,
            Ok(Value::Bool(false)) => Outcome::NoMatch,
            Ok(other) => Outcome::Failed(format!("the filter gave {:?}, not a bool", other.type_of())),
            Err(_) if not_json => Outcome::Failed("the body is not JSON".into()),
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }
}

/// What every event a filter matches must have, as far as the database can tell: its
/// top-level conjunctions of `body.path == literal`, `event_type == "…"`,
/// `event_type.startsWith("…")` and `source == "…"`. A search narrows its query with it
/// (the body's GIN index answers the containments) and evaluates the filter itself on
/// what is left, so the narrowing needs to be a superset only: a CEL `==` that is true
/// means the value at that path is the literal, so the body contains it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Narrowing {
    /// JSON documents the body contains (`@>`), one per equality.
    pub contains: Vec<serde_json::Value>,
    pub event_type: Option<String>,
    pub event_type_prefix: Option<String>,
    pub source: Option<String>,
}

impl Filter {
    /// See [`Narrowing`].
    pub fn narrowing(&self) -> Narrowing {
        let mut narrowing = Narrowing::default();
        narrow(self.program.expression(), &mut narrowing);
        narrowing
    }
}

fn narrow(node: &IdedExpr, into: &mut Narrowing) {
    use cel::common::ast::operators;
    let Expr::Call(call) = &node.expr else { return };
    match (
        call.func_name.as_str(),
        call.target.as_deref(),
        call.args.as_slice(),
    ) {
        (operators::LOGICAL_AND, None, [left, right]) => {
            narrow(left, into);
            narrow(right, into);
        }
        (operators::EQUALS, None, [left, right]) => {
            let (path, literal) = match (body_path(left), literal_json(right)) {
                (Some(path), Some(literal)) => (path, literal),
                _ => match (body_path(right), literal_json(left)) {
                    (Some(path), Some(literal)) => (path, literal),
                    _ => {
                        let text = |n: &IdedExpr| match literal_json(n) {
                            Some(serde_json::Value::String(s)) => Some(s),
                            _ => None,
                        };
                        for (variable, value) in [(left, right), (right, left)] {
                            match (ident(variable), text(value)) {
                                ("event_type", Some(value)) => into.event_type = Some(value),
                                ("source", Some(value)) => into.source = Some(value),
                                _ => {}
                            }
                        }
                        return;
                    }
                },
            };
            let document = path
                .into_iter()
                .rev()
                .fold(literal, |inner, field| serde_json::json!({ field: inner }));
            into.contains.push(document);
        }
        ("startsWith", Some(target), [prefix]) if ident(target) == "event_type" => {
            if let Some(serde_json::Value::String(prefix)) = literal_json(prefix) {
                into.event_type_prefix = Some(prefix);
            }
        }
        _ => {}
    }
}

/// The name of a bare variable, `""` for anything else.
fn ident(node: &IdedExpr) -> &str {
    match &node.expr {
        Expr::Ident(name) => name.as_str(),
        _ => "",
    }
}

/// The fields of a chain `body.a.b`, root first; `None` for anything else.
fn body_path(node: &IdedExpr) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut operand = node;
    while let Expr::Select(select) = &operand.expr {
        if select.test {
            return None;
        }
        fields.push(select.field.clone());
        operand = &select.operand;
    }
    match &operand.expr {
        Expr::Ident(name) if name == "body" && !fields.is_empty() => {
            fields.reverse();
            Some(fields)
        }
        _ => None,
    }
}

/// A scalar literal as JSON; `None` for bytes, a non-finite double, or a non-literal.
fn literal_json(node: &IdedExpr) -> Option<serde_json::Value> {
    use cel::common::ast::LiteralValue;
    let Expr::Literal(literal) = &node.expr else {
        return None;
    };
    Some(match literal {
        LiteralValue::Boolean(b) => serde_json::Value::Bool(*b.inner()),
        LiteralValue::Int(i) => serde_json::Value::from(*i.inner()),
        LiteralValue::UInt(u) => serde_json::Value::from(*u.inner()),
        LiteralValue::Double(d) => serde_json::Number::from_f64(*d.inner()).map(serde_json::Value::Number)?,
        LiteralValue::String(s) => serde_json::Value::String(s.inner().to_string()),
        LiteralValue::Null => serde_json::Value::Null,
        LiteralValue::Bytes(_) => return None,
    })
}

/// Refuses brackets nested deeper than [`MAX_NESTING`] (outside string literals), at the
/// first one too deep.
fn check_nesting(text: &str) -> Result<(), CompileError> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let (mut line, mut column) = (1, 0);
    for c in text.chars() {
        column += 1;
        if c == '\n' {
            (line, column) = (line + 1, 0);
        }
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(CompileError {
                        line,
                        column,
                        message: format!("brackets nest at most {MAX_NESTING} deep"),
                    });
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The compile-time walk: unknown variables, nested comprehensions, and which body
/// paths are read.
struct Walk<'a> {
    text: &'a str,
    source_info: &'a cel::common::ast::SourceInfo,
    /// Comprehension variables in scope.
    bound: Vec<String>,
    paths: Vec<Vec<String>>,
    whole_body: bool,
    /// Comprehensions enclosing the node being walked.
    comprehensions: usize,
}

impl Walk<'_> {
    /// `message` at `node`'s place in the text.
    fn error_at(&self, node: &IdedExpr, message: String) -> CompileError {
        let offset = self
            .source_info
            .offset_for(node.id)
            .map_or(0, |(start, _)| start as usize)
            .min(self.text.len());
        let before = self.text.get(..offset).unwrap_or_default();
        CompileError {
            line: before.matches('\n').count() + 1,
            column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
            message,
        }
    }

    fn expr(&mut self, node: &IdedExpr) -> Result<(), CompileError> {
        match &node.expr {
            Expr::Ident(name) => {
                if name == "body" && !self.bound.contains(name) {
                    self.whole_body = true;
                } else if !VARIABLES.contains(&name.as_str())
                    && !TYPE_NAMES.contains(&name.as_str())
                    && !self.bound.contains(name)
                {
                    return Err(self.error_at(
                        node,
                        format!(
                            "unknown variable `{name}` (a filter reads {})",
                            VARIABLES.join(", ")
                        ),
                    ));
                }
            }
            Expr::Select(_) => {
                // A chain `body.a.b` is one path; anything else below is walked as is.
                let mut fields = Vec::new();
                let mut operand = node;
                while let Expr::Select(select) = &operand.expr {
                    fields.push(select.field.clone());
                    operand = &select.operand;
                }
                match &operand.expr {
                    Expr::Ident(name) if name == "body" && !self.bound.contains(name) => {
                        fields.reverse();
                        self.paths.push(fields);
                    }
                    _ => self.expr(operand)?,
                }
            }
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    self.expr(target)?;
                }
                for arg in &call.args {
                    self.expr(arg)?;
                }
            }
            Expr::Comprehension(comprehension) => {
                if self.comprehensions > 0 {
                    return Err(self.error_at(
                        node,
                        "a comprehension (all, exists, exists_one, map, filter) inside another is refused: \
                         its cost would grow with the square of the event"
                            .into(),
                    ));
                }
                self.expr(&comprehension.iter_range)?;
                self.expr(&comprehension.accu_init)?;
                let scope = self.bound.len();
                self.bound.push(comprehension.iter_var.clone());
                self.bound.extend(comprehension.iter_var2.clone());
                self.bound.push(comprehension.accu_var.clone());
                self.comprehensions += 1;
                for part in [
                    &comprehension.loop_cond,
                    &comprehension.loop_step,
                    &comprehension.result,
                ] {
                    self.expr(part)?;
                }
                self.comprehensions -= 1;
                self.bound.truncate(scope);
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.expr(element)?;
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(entry) = &entry.expr {
                        self.expr(&entry.key)?;
                        self.expr(&entry.value)?;
                    }
                }
            }
            Expr::Struct(_) => {
                return Err(self.error_at(node, "a filter builds no messages".into()));
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
        Ok(())
    }
}

/// The body with only `paths` in it: each path's last field holds its whole value.
fn pruned(json: &serde_json::Value, paths: &[Vec<String>]) -> Value {
    let mut tree = Tree::default();
    for path in paths {
        tree.insert(path, json);
    }
    tree.into_cel()
}

/// A partial copy of the body as CEL will see it.
#[derive(Default)]
struct Tree<'j> {
    fields: HashMap<&'j str, Node<'j>>,
}

enum Node<'j> {
    Whole(&'j serde_json::Value),
    Part(Tree<'j>),
}

impl<'j> Tree<'j> {
    fn insert(&mut self, path: &[String], json: &'j serde_json::Value) {
        let (Some((first, rest)), serde_json::Value::Object(object)) = (path.split_first(), json) else {
            return;
        };
        let Some((key, value)) = object.get_key_value(first.as_str()) else {
            return;
        };
        if rest.is_empty() || !value.is_object() {
            self.fields.insert(key.as_str(), Node::Whole(value));
            return;
        }
        match self
            .fields
            .entry(key.as_str())
            .or_insert_with(|| Node::Part(Tree::default()))
        {
            Node::Whole(_) => {}
            Node::Part(tree) => tree.insert(rest, value),
        }
    }

    fn into_cel(self) -> Value {
        let map: HashMap<Key, Value> = self
            .fields
            .into_iter()
            .map(|(key, node)| {
                let value = match node {
                    Node::Whole(json) => to_cel(json),
                    Node::Part(tree) => tree.into_cel(),
                };
                (Key::String(Arc::new(key.to_string())), value)
            })
            .collect();
        Value::Map(Map { map: Arc::new(map) })
    }
}

/// A JSON value as CEL's: integers as `int` (or `uint` above `i64`), other numbers as
/// `double`.
fn to_cel(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(flag) => Value::Bool(*flag),
        serde_json::Value::Number(number) => number
            .as_i64()
            .map(Value::Int)
            .or_else(|| number.as_u64().map(Value::UInt))
            .unwrap_or_else(|| Value::Float(number.as_f64().unwrap_or(f64::NAN))),
        serde_json::Value::String(text) => Value::String(Arc::new(text.clone())),
        serde_json::Value::Array(items) => Value::List(Arc::new(items.iter().map(to_cel).collect())),
        serde_json::Value::Object(fields) => Value::Map(Map {
            map: Arc::new(
                fields
                    .iter()
                    .map(|(key, value)| (Key::String(Arc::new(key.clone())), to_cel(value)))
                    .collect(),
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVOICE: &[u8] = br#"{"id":"evt_1","type":"invoice.paid","livemode":true,"data":{"object":{"amount_paid":2500,"currency":"usd","customer":"cus_123","lines":[{"amount":2000},{"amount":500}]}}}"#;

    fn outcome(filter: &str, body: &[u8]) -> Outcome {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        Filter::compile(filter)
            .unwrap()
            .evaluate(json.as_ref(), "stripe", "invoice.paid")
    }

    #[test]
    fn a_three_clause_filter_matches_and_misses() {
        let filter =
            r#"event_type == "invoice.paid" && body.data.object.amount_paid > 1000 && body.livemode"#;
        assert_eq!(outcome(filter, INVOICE), Outcome::Match);
        let small = String::from_utf8_lossy(INVOICE).replace("2500", "999");
        assert_eq!(outcome(filter, small.as_bytes()), Outcome::NoMatch);
        assert_eq!(outcome(r#"source == "stripe""#, INVOICE), Outcome::Match);
    }

    #[test]
    fn comprehensions_has_and_in_read_what_they_need() {
        assert_eq!(
            outcome("body.data.object.lines.exists(l, l.amount == 500)", INVOICE),
            Outcome::Match
        );
        assert_eq!(
            outcome("has(body.data.object.refunds)", INVOICE),
            Outcome::NoMatch
        );
        assert_eq!(
            outcome(r#"body.data.object.currency in ["usd", "eur"]"#, INVOICE),
            Outcome::Match
        );
        assert_eq!(
            outcome(r#"body["type"] == "invoice.paid""#, INVOICE),
            Outcome::Match
        );
        assert_eq!(
            outcome(r#"body.data.object.customer.startsWith("cus_")"#, INVOICE),
            Outcome::Match
        );
        assert_eq!(
            outcome(r#"body.data.object.customer.matches("^cus_[0-9]+$")"#, INVOICE),
            Outcome::Match
        );
    }

    #[test]
    fn failures_are_no_match_with_a_reason() {
        assert!(matches!(
            outcome("body.data.object.amount_due > 1", INVOICE),
            Outcome::Failed(m) if m.contains("amount_due")
        ));
        assert!(matches!(
            outcome("body.data.object.currency > 1", INVOICE),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            outcome("body.livemode", b"not json"),
            Outcome::Failed(m) if m.contains("not JSON")
        ));
        assert!(matches!(
            outcome("body.data.object.amount_paid", INVOICE),
            Outcome::Failed(m) if m.contains("not a bool")
        ));
    }

    #[test]
    fn only_the_paths_read_are_handed_over() {
        let filter = Filter::compile("body.data.object.amount_paid > 1 && body.livemode").unwrap();
        assert_eq!(
            filter.paths,
            Some(vec![
                vec!["data".to_string(), "object".into(), "amount_paid".into()],
                vec!["livemode".to_string()],
            ])
        );
        let json: serde_json::Value = serde_json::from_slice(INVOICE).unwrap();
        let Value::Map(root) = pruned(&json, filter.paths.as_ref().unwrap()) else {
            panic!("not a map")
        };
        assert_eq!(root.map.len(), 2, "data and livemode only");
        assert_eq!(Filter::compile(r#"body["type"] == "x""#).unwrap().paths, None);
    }

    #[test]
    fn the_narrowing_is_what_every_match_must_contain() {
        let narrowing = Filter::compile(
            r#"body.data.object.customer == "cus_123" && event_type.startsWith("invoice.")
               && (body.data.object.amount_paid > 1000 && 2500 == body.data.object.amount_paid)
               && source == "stripe" && body.livemode == true"#,
        )
        .unwrap()
        .narrowing();
        assert_eq!(
            narrowing.contains,
            vec![
                serde_json::json!({"data": {"object": {"customer": "cus_123"}}}),
                serde_json::json!({"data": {"object": {"amount_paid": 2500}}}),
                serde_json::json!({"livemode": true}),
            ]
        );
        assert_eq!(narrowing.event_type_prefix.as_deref(), Some("invoice."));
        assert_eq!(narrowing.source.as_deref(), Some("stripe"));
        // A disjunction, a negation or a comparison narrows nothing (a superset only).
        for open in [
            r#"body.a == 1 || body.b == 2"#,
            r#"!(body.a == 1)"#,
            r#"body.a >= 1"#,
            r#"body.a != 1"#,
            r#"event_type == body.type"#,
        ] {
            assert_eq!(
                Filter::compile(open).unwrap().narrowing(),
                Narrowing::default(),
                "{open}"
            );
        }
        let typed = Filter::compile(r#"event_type == "invoice.paid""#)
            .unwrap()
            .narrowing();
        assert_eq!(typed.event_type.as_deref(), Some("invoice.paid"));
    }

    #[test]
    fn bad_filters_are_refused_with_their_position() {
        let error = Filter::compile("body.amount >").unwrap_err();
        assert_eq!((error.line, error.column), (1, 14), "{error}");
        let error = Filter::compile("body.a > 1 &&\n  amount > 1").unwrap_err();
        assert!(error.message.contains("unknown variable `amount`"), "{error}");
        assert_eq!((error.line, error.column), (2, 3), "{error}");
        let error = Filter::compile("body.a.all(x, body.b.exists(y, y == x))").unwrap_err();
        assert!(error.message.contains("inside another"), "{error}");
        let error = Filter::compile(&format!("{}1{}", "(".repeat(17), ")".repeat(17))).unwrap_err();
        assert_eq!((error.line, error.column), (1, 17), "{error}");
        assert!(
            Filter::compile(r#"body.a == "((((((((((((((((((((""#).is_ok(),
            "brackets in strings"
        );
        assert!(Filter::compile(&format!("{}1{}", "[".repeat(16), "]".repeat(16))).is_ok());
        // The longest chains the limits allow compile, and evaluate on a worker's stack.
        for chain in [
            format!("{}1 == 0", "1 + ".repeat(250)),
            format!("body{} == 1", ".a".repeat(500)),
        ] {
            let filter = Filter::compile(&chain).unwrap();
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || filter.evaluate(Some(&serde_json::json!({})), "s", "t"))
                .unwrap()
                .join()
                .unwrap();
        }
        assert!(
            Filter::compile(&format!("{}true", "true && ".repeat(200))).is_err(),
            "over the size limit"
        );
        assert!(Filter::compile("  ").is_err());
        assert!(Filter::compile("body.a.exists(x, x > 1) && body.b.all(y, y > 1)").is_ok());
        assert!(Filter::compile("type(body.amount) == int").is_ok());
    }
}
