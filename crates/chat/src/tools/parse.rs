//! SmolLM3's tool calls, parsed from the answer as it streams: `<tool_call>{"name": ...,
//! "arguments": {...}}</tool_call>` (the format its template asks for), one or more per answer.
//!
//! Accepted as llama.cpp's SmolLM3/Hermes parsing accepts them: whitespace and newlines around
//! the JSON, a Markdown ```json fence inside the tags, `arguments` given as a JSON object or as a
//! string holding one, `arguments` absent (no arguments), a call left unclosed at the end of the
//! answer (the model stopped right after the JSON). Anything else between the tags is a
//! [`MalformedCall`]: it goes back to the model as an error, it is never shown as answer text.

use serde_json::{Map, Value};

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// A well-formed call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Map<String, Value>,
}

/// Text between the tags that is not a call; `why` says what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct MalformedCall {
    pub raw: String,
    pub why: String,
}

pub type ParsedCall = std::result::Result<ToolCall, MalformedCall>;

/// Splits streamed answer text into the text to show and the tool calls. Text that may be the
/// start of `<tool_call>` is held back until the next piece decides it.
#[derive(Debug, Default)]
pub struct ToolCallParser {
    /// Held back: a possible prefix of [`OPEN`] (outside a call) or the call's body so far.
    pending: String,
    inside: bool,
    calls: Vec<ParsedCall>,
}

impl ToolCallParser {
    /// Feeds one piece; returns the text to show now (outside any call).
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let mut shown = String::new();
        loop {
            if self.inside {
                let Some(end) = self.pending.find(CLOSE) else {
                    return shown;
                };
                let body: String = self.pending.drain(..end + CLOSE.len()).collect();
                self.calls.push(parse_call(&body[..end]));
                self.inside = false;
            } else if let Some(start) = self.pending.find(OPEN) {
                shown.extend(self.pending.drain(..start));
                self.pending.drain(..OPEN.len());
                self.inside = true;
            } else {
                // Keep the longest tail that could still become `<tool_call>`.
                let keep = (1..OPEN.len())
                    .rev()
                    .find(|&n| self.pending.ends_with(&OPEN[..n]))
                    .unwrap_or(0);
                let cut = self.pending.len() - keep;
                shown.extend(self.pending.drain(..cut));
                return shown;
            }
        }
    }

    /// Calls completed so far (taken: each is returned once).
    pub fn take_calls(&mut self) -> Vec<ParsedCall> {
        std::mem::take(&mut self.calls)
    }

    /// The answer ended: returns the text still held back and every remaining call. An unclosed
    /// call counts when its body is a complete call; otherwise it is malformed.
    pub fn finish(&mut self) -> (String, Vec<ParsedCall>) {
        let pending = std::mem::take(&mut self.pending);
        let shown = if self.inside {
            self.inside = false;
            let call = parse_call(&pending).map_err(|e| MalformedCall {
                why: format!("the call is not closed with {CLOSE} ({})", e.why),
                ..e
            });
            self.calls.push(call);
            String::new()
        } else {
            pending
        };
        (shown, self.take_calls())
    }
}

/// Parses the text between `<tool_call>` and `</tool_call>`.
pub fn parse_call(body: &str) -> ParsedCall {
    let malformed = |why: String| MalformedCall {
        raw: body.to_owned(),
        why,
    };
    let json = strip_fence(body.trim());
    let value: Value = serde_json::from_str(json)
        .map_err(|e| malformed(format!("the call is not valid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(malformed(
            "the call must be a JSON object with \"name\" and \"arguments\"".into(),
        ));
    };
    let name = match object.remove("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name.trim().to_owned(),
        Some(_) => return Err(malformed("\"name\" must be a non-empty string".into())),
        None => return Err(malformed("the call has no \"name\"".into())),
    };
    let arguments = match object.remove("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        // Some models write the arguments as a JSON string, as OpenAI's API carries them.
        Some(Value::String(text)) if text.trim().is_empty() => Map::new(),
        Some(Value::String(text)) => match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(malformed(format!(
                    "\"arguments\" of {name} must be a JSON object, got the string {text:?}"
                )))
            }
        },
        Some(other) => {
            return Err(malformed(format!(
                "\"arguments\" of {name} must be a JSON object, got {other}"
            )))
        }
    };
    Ok(ToolCall { name, arguments })
}

/// The JSON inside a Markdown code fence (```json ... ```), or the text as it is.
fn strip_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, arguments: Value) -> ParsedCall {
        let Value::Object(arguments) = arguments else {
            panic!("arguments must be an object")
        };
        Ok(ToolCall {
            name: name.into(),
            arguments,
        })
    }

    /// Feeds `pieces`; returns the text shown and all calls.
    fn run(pieces: &[&str]) -> (String, Vec<ParsedCall>) {
        let mut p = ToolCallParser::default();
        let mut shown: String = pieces.iter().map(|piece| p.push(piece)).collect();
        let (tail, calls) = p.finish();
        shown.push_str(&tail);
        (shown, calls)
    }

    #[test]
    fn smollm3_format_in_one_piece() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2+2\"}}\n</tool_call>";
        let (shown, calls) = run(&[text]);
        assert_eq!(shown, "Let me check.\n");
        assert_eq!(calls, [call("calculator", json!({"expression": "2+2"}))]);
    }

    #[test]
    fn split_across_tokens_at_every_byte() {
        let text = "A<tool_call>{\"name\": \"now\", \"arguments\": {}}</tool_call>B <tool_c";
        // Every split point, each piece one char: tags and JSON split anywhere.
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        let (shown, calls) = run(&pieces);
        // The trailing `<tool_c` was held back, then released at the end: it was never a call.
        assert_eq!(shown, "AB <tool_c");
        assert_eq!(calls, [call("now", json!({}))]);
        for cut in 0..text.len() {
            let (shown, calls) = run(&[&text[..cut], &text[cut..]]);
            assert_eq!(shown, "AB <tool_c", "cut at {cut}");
            assert_eq!(calls, [call("now", json!({}))], "cut at {cut}");
        }
    }

    #[test]
    fn nothing_is_held_back_that_cannot_start_a_call() {
        let mut p = ToolCallParser::default();
        assert_eq!(p.push("1 < 2 and <b>"), "1 < 2 and <b>");
        assert_eq!(p.push("x <tool"), "x ");
        assert_eq!(p.push("s>"), "<tools>");
    }

    #[test]
    fn two_calls_and_text_around_them() {
        let text = "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"y\": [true]}}\n</tool_call>\nDone";
        let (shown, calls) = run(&[text]);
        assert_eq!(shown, "\n\nDone");
        assert_eq!(
            calls,
            [call("a", json!({"x": 1})), call("b", json!({"y": [true]}))]
        );
    }

    #[test]
    fn arguments_as_a_string_fenced_json_and_missing_arguments() {
        let (_, calls) = run(&[
            "<tool_call>{\"name\": \"calc\", \"arguments\": \"{\\\"expression\\\": \\\"1+1\\\"}\"}</tool_call>",
            "<tool_call>\n```json\n{\"name\": \"now\"}\n```\n</tool_call>",
            "<tool_call>{\"name\": \" now \", \"arguments\": \"\"}</tool_call>",
        ]);
        assert_eq!(
            calls,
            [
                call("calc", json!({"expression": "1+1"})),
                call("now", json!({})),
                call("now", json!({}))
            ]
        );
    }

    #[test]
    fn malformed_calls_say_why() {
        let cases = [
            (
                "{\"name\": \"calc\", \"arguments\": {\"x\": 1}",
                "not valid JSON",
            ),
            ("[1, 2]", "must be a JSON object"),
            ("{\"arguments\": {}}", "has no \"name\""),
            ("{\"name\": 3}", "non-empty string"),
            (
                "{\"name\": \"calc\", \"arguments\": [1]}",
                "must be a JSON object, got [1]",
            ),
            (
                "{\"name\": \"calc\", \"arguments\": \"2+2\"}",
                "got the string \"2+2\"",
            ),
        ];
        for (body, why) in cases {
            let (shown, calls) = run(&[&format!("x<tool_call>{body}</tool_call>y")]);
            assert_eq!(shown, "xy");
            match &calls[..] {
                [Err(e)] => {
                    assert!(e.why.contains(why), "{body}: {}", e.why);
                    assert_eq!(e.raw, body);
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_unclosed_call_counts_when_its_json_is_complete() {
        let (shown, calls) = run(&["Hi <tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n"]);
        assert_eq!(shown, "Hi ");
        assert_eq!(calls, [call("now", json!({}))]);
        let (_, calls) = run(&["<tool_call>{\"name\": \"now\", \"argu"]);
        match &calls[..] {
            [Err(e)] => assert!(e.why.contains("not closed"), "{}", e.why),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn calls_are_taken_as_they_complete() {
        let mut p = ToolCallParser::default();
        p.push("<tool_call>{\"name\": \"a\"}</tool_call><tool_call>{\"na");
        assert_eq!(p.take_calls(), [call("a", json!({}))]);
        assert!(p.take_calls().is_empty());
        p.push("me\": \"b\"}</tool_call>");
        assert_eq!(p.finish().1, [call("b", json!({}))]);
    }
}
