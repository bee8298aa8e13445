//! The built-in tools, all read-only: the current date and time in the user's time zone, a
//! calculator (the `evalexpr` crate: integers stay exact 64-bit integers, a division with a
//! remainder gives the decimal quotient, overflow is an error rather than a wrong number), and a search of the user's chats (the store's FTS5 index).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{ToolCall, ToolError, ToolHost};
use crate::core::Core;

pub const CURRENT_TIME: &str = "current_time";
pub const CALCULATOR: &str = "calculator";
pub const SEARCH_CHATS: &str = "search_chats";

/// Longest expression the calculator takes.
const MAX_EXPRESSION_BYTES: usize = 4096;
/// Hits `search_chats` returns at most.
const MAX_HITS: usize = 5;

/// The tools every chat gets.
pub struct Builtins {
    core: Arc<Core>,
}

impl Builtins {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Builtins { core }
    }
}

impl ToolHost for Builtins {
    fn specs(&self) -> Vec<Value> {
        specs()
    }

    fn run(&self, call: &ToolCall, _stopped: &Arc<AtomicBool>) -> Result<String, ToolError> {
        match call.name.as_str() {
            CURRENT_TIME => {
                no_arguments(&call.arguments)?;
                Ok(current_time(chrono::Local::now(), &time_zone_name()))
            }
            CALCULATOR => calculate(string_argument(&call.arguments, "expression")?),
            SEARCH_CHATS => {
                let query = string_argument(&call.arguments, "query")?;
                let hits = self
                    .core
                    .store(|s| s.search(query))
                    .map_err(|e| ToolError::Failed(e.to_string()))?;
                Ok(describe_hits(query, &hits))
            }
            other => Err(ToolError::Unknown(other.into())),
        }
    }
}

/// The tools' descriptions for the model (`xml_tools`).
pub fn specs() -> Vec<Value> {
    vec![
        json!({
            "name": CURRENT_TIME,
            "description": "Get the current date, time and time zone of the user.",
            "parameters": {"type": "object", "properties": {}, "required": []}
        }),
        json!({
            "name": CALCULATOR,
            "description": "Evaluate an arithmetic expression exactly, e.g. \"(17 * 23) % 5\" or \"2.5 * math::sqrt(16)\". Integers are exact; operators + - * / % ^ and parentheses.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "The expression to evaluate."}},
                "required": ["expression"]
            }
        }),
        json!({
            "name": SEARCH_CHATS,
            "description": "Search the user's earlier chats for words; returns the best matching messages with their chat titles.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "Words to look for."}},
                "required": ["query"]
            }
        }),
    ]
}

fn no_arguments(args: &Map<String, Value>) -> Result<(), ToolError> {
    match args.keys().next() {
        None => Ok(()),
        Some(key) => Err(ToolError::Arguments(format!(
            "this tool takes no arguments (got {key:?})"
        ))),
    }
}

fn string_argument<'a>(args: &'a Map<String, Value>, key: &str) -> Result<&'a str, ToolError> {
    if let Some(other) = args.keys().find(|k| *k != key) {
        return Err(ToolError::Arguments(format!(
            "unexpected argument {other:?} (expected only {key:?})"
        )));
    }
    match args.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim()),
        Some(Value::String(_)) | None => Err(ToolError::Arguments(format!(
            "{key:?} is required and must not be empty"
        ))),
        Some(other) => Err(ToolError::Arguments(format!(
            "{key:?} must be a string, got {other}"
        ))),
    }
}

/// The IANA name of the machine's time zone (the user's), or why it is unknown.
fn time_zone_name() -> String {
    iana_time_zone::get_timezone().unwrap_or_else(|_| "unknown time zone name".into())
}

fn current_time<Tz: chrono::TimeZone>(now: chrono::DateTime<Tz>, zone: &str) -> String
where
    Tz::Offset: std::fmt::Display,
{
    format!(
        "{} ({zone}, UTC{})",
        now.format("%A, %-d %B %Y, %H:%M:%S"),
        now.format("%:z")
    )
}

fn calculate(expression: &str) -> Result<String, ToolError> {
    if expression.len() > MAX_EXPRESSION_BYTES {
        return Err(ToolError::Arguments(format!(
            "the expression is longer than {MAX_EXPRESSION_BYTES} bytes"
        )));
    }
    let evaluated = evalexpr::build_operator_tree::<evalexpr::DefaultNumericTypes>(expression)
        .and_then(|mut tree| {
            exact_divisions(&mut tree);
            tree.eval_with_context_mut(&mut evalexpr::HashMapContext::new())
        });
    match evaluated {
        Ok(evalexpr::Value::Int(n)) => Ok(n.to_string()),
        Ok(evalexpr::Value::Float(x)) if x.is_finite() => Ok(x.to_string()),
        Ok(evalexpr::Value::Float(x)) => Err(ToolError::Failed(format!(
            "the result is not a finite number ({x})"
        ))),
        Ok(evalexpr::Value::Boolean(b)) => Ok(b.to_string()),
        Ok(other) => Err(ToolError::Failed(format!(
            "the expression gives {other}, not a number"
        ))),
        Err(e) => Err(ToolError::Failed(format!("cannot evaluate: {e}"))),
    }
}

/// evalexpr divides integers as Rust does (`7 / 2` is 3); a division of two integers that
/// leaves a remainder becomes its quotient as a decimal instead (3.5), so the calculator is
/// right where the model expects arithmetic. Exact divisions, and everything else, keep
/// evalexpr's exact 64-bit integers. Children first, so a quotient inside a quotient counts.
fn exact_divisions(node: &mut evalexpr::Node) {
    use evalexpr::{Operator, Value};
    for child in node.children_mut() {
        exact_divisions(child);
    }
    if *node.operator() != Operator::Div {
        return;
    }
    let [a, b] = node.children() else { return };
    let (Ok(Value::Int(a)), Ok(Value::Int(b))) = (a.eval(), b.eval()) else {
        return;
    };
    if a.checked_rem(b).is_some_and(|r| r != 0) {
        *node.operator_mut() = Operator::Const {
            value: Value::Float(a as f64 / b as f64),
        };
        node.children_mut().clear();
    }
}

fn describe_hits(query: &str, hits: &[crate::search::SearchHit]) -> String {
    if hits.is_empty() {
        return format!("No message in the user's chats matches {query:?}.");
    }
    let mut out = format!("Messages matching {query:?}:");
    for hit in hits.iter().take(MAX_HITS) {
        out.push_str(&format!(
            "\n- chat \"{}\", {} message: {}",
            hit.chat_title,
            hit.role.as_str(),
            hit.snippet_marked("", "")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_calculator_is_exact_and_refuses_what_is_not_arithmetic() {
        assert_eq!(calculate("(17 * 23) % 5").unwrap(), "1");
        assert_eq!(
            calculate("123456789 * 987654321").unwrap(),
            "121932631112635269"
        );
        // Division is exact: integers stay integers, a remainder gives the decimal quotient.
        assert_eq!(calculate("7 / 2").unwrap(), "3.5");
        assert_eq!(calculate("-7 / 2").unwrap(), "-3.5");
        assert_eq!(calculate("8 / 2").unwrap(), "4");
        assert_eq!(calculate("1 / 4 + 1 / 4").unwrap(), "0.5");
        assert_eq!(calculate("(7 / 2) * 2").unwrap(), "7");
        assert_eq!(calculate("1 / (3 / 2)").unwrap(), "0.6666666666666666");
        assert_eq!(calculate("7.0 / 2").unwrap(), "3.5");
        assert_eq!(
            calculate("9000000000000000000 / 3").unwrap(),
            "3000000000000000000"
        );
        assert_eq!(calculate("math::sqrt(16)").unwrap(), "4");
        assert!(matches!(
            calculate("9223372036854775807 + 1"),
            Err(ToolError::Failed(_))
        ));
        assert!(matches!(calculate("1 / 0"), Err(ToolError::Failed(_))));
        assert!(matches!(calculate("2 +"), Err(ToolError::Failed(_))));
        assert!(matches!(calculate("\"text\""), Err(ToolError::Failed(_))));
    }

    #[test]
    fn the_time_names_the_zone_and_offset() {
        let zone = chrono::FixedOffset::east_opt(2 * 3600).unwrap();
        let now = zone.with_ymd_and_hms(2026, 12, 5, 4, 7, 9).unwrap();
        assert_eq!(
            current_time(now, "Europe/Paris"),
            "Saturday, 5 December 2026, 04:07:09 (Europe/Paris, UTC+02:00)"
        );
    }

    #[test]
    fn arguments_are_checked() {
        let args = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            string_argument(&args(json!({"expression": " 1+1 "})), "expression").unwrap(),
            "1+1"
        );
        for bad in [
            json!({}),
            json!({"expression": ""}),
            json!({"expression": 2}),
            json!({"expr": "1"}),
        ] {
            assert!(
                matches!(
                    string_argument(&args(bad.clone()), "expression"),
                    Err(ToolError::Arguments(_))
                ),
                "{bad}"
            );
        }
        assert!(no_arguments(&args(json!({"tz": "x"}))).is_err());
    }
}
