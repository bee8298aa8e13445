//! SmolLM3's tool calls, parsed from the answer as it streams: `<tool_call>{"name": ...,
//! "arguments": {...}}</tool_call>` (the format its template asks for), one or more per answer.
//!
//! The variants are the ones llama.cpp accepted for SmolLM3: its template names `<tool_call>`,
//! which llama.cpp's `common_chat_templates_apply_jinja` took as the Hermes 2 Pro format, parsed
//! by `common_chat_parse_hermes_2_pro` (ggml-org/llama.cpp, `common/chat.cpp`: the regex parser
//! it had from SmolLM3's release in July 2025 until its template auto-parser replaced the
//! per-format parsers; the source vendored by llama-cpp-python 0.3.36 has only the latter). Its opening regex, and what we make of each part:
//!
//! ```text
//! (```(?:xml|json)?\n\s*)?                                   a fence around the call
//! (<tool_call>|<function_call>|<tool>|<tools>|<response>|<json>|<xml>|<JSON>)?
//! (\s*\{\s*"name")                                           the JSON call
//! | <function=([^>]+)>  | <function name="([^"]+)">          the name, then its arguments' JSON
//! ```
//!
//! - `<tool_call>` (SmolLM3's own tag): everything up to `</tool_call>` is a call, as before:
//!   whitespace and a Markdown ```json fence inside the tags are allowed, `arguments` may be an
//!   object, a string holding one, or absent; anything else is a [`MalformedCall`] (it goes back
//!   to the model as an error and is never shown as answer text). Unlike llama.cpp, `"name"`
//!   need not be the first key.
//! - The other tags (`<function_call>` … `<JSON>`) start a call only when `{"name"` follows
//!   (llama.cpp's rule: `<json>` or `<response>` alone is text); their close tag (`</json>`…)
//!   ends it, and the body is read as for `<tool_call>`.
//! - `<function=NAME>{args}</function>` and `<function name="NAME">{args}</function>`: the body
//!   is the arguments object (empty: none).
//! - A JSON object without a tag, `{"name": ...}` (llama.cpp accepts it anywhere in the text):
//!   a call only when its keys are exactly `name` and `arguments`, so an example object in an
//!   answer (`{"name": "Ada", "born": 1815}`) stays text; an incomplete or invalid one is text.
//! - A fence (```` ``` ````, ```` ```json ````, ```` ```xml ````, then a newline) right before any of
//!   the JSON forms belongs to the call, with its closing ```` ``` ```` after it (when it follows).
//! - A tagged call left unclosed at the end of the answer counts when its body is complete.
//!
//! llama.cpp also drops whitespace after a call and, when any call is incomplete at the end,
//! keeps the whole answer as text; here the text around calls is kept as written and each call
//! stands on its own.

use serde_json::{Map, Value};

/// SmolLM3's own tags.
pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// The tags around a JSON call and their close tags: SmolLM3's, then the others llama.cpp took.
const TAGS: [(&str, &str); 8] = [
    (OPEN, CLOSE),
    ("<function_call>", "</function_call>"),
    ("<tool>", "</tool>"),
    ("<tools>", "</tools>"),
    ("<response>", "</response>"),
    ("<json>", "</json>"),
    ("<xml>", "</xml>"),
    ("<JSON>", "</JSON>"),
];
const FENCE: &str = "```";
const FUNCTION_EQ: &str = "<function=";
const FUNCTION_NAME: &str = "<function name=\"";
const FUNCTION_CLOSE: &str = "</function>";
/// The longest function name held back while its `>` (or `"`) is awaited: past it the text is
/// not a call.
const MAX_NAME: usize = 256;

/// A well-formed call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Map<String, Value>,
}

/// Text that opened a call but is not one; `why` says what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct MalformedCall {
    /// The call's body (between the tags).
    pub raw: String,
    pub why: String,
    /// All of it as the model wrote it, tags included.
    pub written: String,
}

pub type ParsedCall = std::result::Result<ToolCall, MalformedCall>;

/// What follows the header of a call.
#[derive(Debug)]
enum Body {
    /// Up to `close`: a call or a [`MalformedCall`]. With `function` (the name from
    /// `<function=…>`), the body is the arguments.
    Tagged {
        close: &'static str,
        function: Option<String>,
    },
    /// A JSON object with no tag: a call when it is complete and shaped like one, else text.
    Bare,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Outside,
    /// In a call; `header` is the text that opened it (fence, tag), `fenced` whether it began
    /// with a fence, whose closing ``` then belongs to it too.
    Inside {
        body: Body,
        header: String,
        fenced: bool,
    },
    /// After a fenced call: whitespace and the closing ``` are the call's.
    Fence,
}

/// Splits streamed answer text into the text to show and the tool calls. Text that may be the
/// start of a call is held back until the next piece decides it.
#[derive(Debug, Default)]
pub struct ToolCallParser {
    /// Held back: a possible start of a call (outside one) or the call's body so far.
    pending: String,
    state: State,
    calls: Vec<ParsedCall>,
}

impl ToolCallParser {
    /// Feeds one piece; returns the text to show now (outside any call).
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let mut shown = String::new();
        while self.advance(&mut shown) {}
        shown
    }

    /// Moves past one part of the pending text (text, a header, a call, a closing fence);
    /// false when what is left must wait for more.
    fn advance(&mut self, shown: &mut String) -> bool {
        match std::mem::take(&mut self.state) {
            State::Outside => match find_start(&self.pending) {
                Start::None => {
                    shown.push_str(&self.pending);
                    self.pending.clear();
                    false
                }
                Start::Maybe(at) => {
                    shown.extend(self.pending.drain(..at));
                    false
                }
                Start::At(at, Header { len, body, fenced }) => {
                    shown.extend(self.pending.drain(..at));
                    let header = self.pending.drain(..len).collect();
                    self.state = State::Inside {
                        body,
                        header,
                        fenced,
                    };
                    true
                }
            },
            State::Inside {
                body: Body::Tagged { close, function },
                header,
                fenced,
            } => {
                let Some(end) = self.pending.find(close) else {
                    self.state = State::Inside {
                        body: Body::Tagged { close, function },
                        header,
                        fenced,
                    };
                    return false;
                };
                let text: String = self.pending.drain(..end).collect();
                self.pending.drain(..close.len());
                let written = format!("{header}{text}{close}");
                self.calls.push(tagged_call(&text, function, written));
                self.state = if fenced { State::Fence } else { State::Outside };
                true
            }
            State::Inside {
                body: Body::Bare,
                header,
                fenced,
            } => {
                let mut stream = serde_json::Deserializer::from_str(&self.pending).into_iter();
                match stream.next() {
                    Some(Ok(value)) => {
                        let end = stream.byte_offset();
                        let text: String = self.pending.drain(..end).collect();
                        match bare_call(value) {
                            Some(call) => {
                                self.calls.push(Ok(call));
                                self.state = if fenced { State::Fence } else { State::Outside };
                            }
                            None => {
                                shown.push_str(&header);
                                shown.push_str(&text);
                            }
                        }
                        true
                    }
                    Some(Err(e)) if e.is_eof() => {
                        self.state = State::Inside {
                            body: Body::Bare,
                            header,
                            fenced,
                        };
                        false
                    }
                    // Not JSON: text, scanned again after its `{`.
                    _ => {
                        shown.push_str(&header);
                        shown.extend(self.pending.drain(..1));
                        true
                    }
                }
            }
            State::Fence => {
                let rest = self.pending.trim_start();
                if rest.starts_with(FENCE) {
                    let end = self.pending.len() - rest.len() + FENCE.len();
                    self.pending.drain(..end);
                } else if FENCE.starts_with(rest) {
                    self.state = State::Fence;
                    return false;
                }
                true
            }
        }
    }

    /// Calls completed so far (taken: each is returned once).
    pub fn take_calls(&mut self) -> Vec<ParsedCall> {
        std::mem::take(&mut self.calls)
    }

    /// The answer ended: returns the text still held back and every remaining call. An unclosed
    /// tagged call counts when its body is a complete call; otherwise it is malformed. An
    /// unfinished untagged object is text.
    pub fn finish(&mut self) -> (String, Vec<ParsedCall>) {
        let pending = std::mem::take(&mut self.pending);
        let shown = match std::mem::take(&mut self.state) {
            State::Outside | State::Fence => pending,
            State::Inside {
                body: Body::Tagged { close, function },
                header,
                ..
            } => {
                let written = format!("{header}{pending}");
                let call = tagged_call(&pending, function, written).map_err(|e| MalformedCall {
                    why: format!("the call is not closed with {close} ({})", e.why),
                    ..e
                });
                self.calls.push(call);
                String::new()
            }
            State::Inside {
                body: Body::Bare,
                header,
                ..
            } => header + &pending,
        };
        (shown, self.take_calls())
    }
}

/// Where the first call may start in `text`.
enum Start {
    None,
    /// At this byte the text may become a call: more is needed to tell.
    Maybe(usize),
    At(usize, Header),
}

/// The opening of a call: its length in bytes and what follows.
struct Header {
    len: usize,
    body: Body,
    fenced: bool,
}

/// Why text is not (yet) a header.
#[derive(Clone, Copy, PartialEq)]
enum Miss {
    /// The text ends where a header could still follow.
    Partial,
    No,
}

type Matched<T> = Result<T, Miss>;

fn find_start(text: &str) -> Start {
    for (at, byte) in text.bytes().enumerate() {
        if !matches!(byte, b'<' | b'`' | b'{') {
            continue;
        }
        match header(&text[at..]) {
            Ok(h) => return Start::At(at, h),
            Err(Miss::Partial) => return Start::Maybe(at),
            Err(Miss::No) => {}
        }
    }
    Start::None
}

/// `lit` at the start of `text`: the rest after it.
fn eat<'a>(text: &'a str, lit: &str) -> Matched<&'a str> {
    match text.strip_prefix(lit) {
        Some(rest) => Ok(rest),
        None if lit.starts_with(text) => Err(Miss::Partial),
        None => Err(Miss::No),
    }
}

/// The first alternative that matches; else `Partial` when one still may.
fn first<T>(alternatives: impl IntoIterator<Item = Matched<T>>) -> Matched<T> {
    let mut miss = Miss::No;
    for alternative in alternatives {
        match alternative {
            Ok(found) => return Ok(found),
            Err(Miss::Partial) => miss = Miss::Partial,
            Err(Miss::No) => {}
        }
    }
    Err(miss)
}

fn header(text: &str) -> Matched<Header> {
    match fence(text) {
        Ok(after) => {
            let (len, body) = json_start(after)?;
            Ok(Header {
                len: text.len() - after.len() + len,
                body,
                fenced: true,
            })
        }
        Err(Miss::Partial) => Err(Miss::Partial),
        Err(Miss::No) => {
            let (len, body) = first([json_start(text), function_start(text)])?;
            Ok(Header {
                len,
                body,
                fenced: false,
            })
        }
    }
}

/// ```` ``` ````, ```` ```json ```` or ```` ```xml ````, a newline and any whitespace: the rest.
fn fence(text: &str) -> Matched<&str> {
    let rest = eat(text, FENCE)?;
    let rest = first([eat(rest, "json"), eat(rest, "xml")]).or_else(|miss| match miss {
        Miss::Partial if !rest.is_empty() => Err(Miss::Partial),
        _ => Ok(rest),
    })?;
    let rest = eat(rest, "\n")?.trim_start();
    if rest.is_empty() {
        return Err(Miss::Partial);
    }
    Ok(rest)
}

/// A tag and `{"name"`, or `{"name"` alone (the header is then empty: the body is the object).
fn json_start(text: &str) -> Matched<(usize, Body)> {
    let tagged = TAGS.iter().map(|&(open, close)| {
        let rest = eat(text, open)?;
        // SmolLM3's own tag always opens a call; the others only before `{"name"`.
        if open != OPEN {
            named_object(rest)?;
        }
        Ok((
            open.len(),
            Body::Tagged {
                close,
                function: None,
            },
        ))
    });
    let bare = named_object(text).map(|()| (0, Body::Bare));
    first(tagged.chain([bare]))
}

/// `\s*\{\s*"name"` at the start of `text`.
fn named_object(text: &str) -> Matched<()> {
    let rest = eat(text.trim_start(), "{")?;
    eat(rest.trim_start(), "\"name\"").map(|_| ())
}

/// `<function=NAME>` or `<function name="NAME">`.
fn function_start(text: &str) -> Matched<(usize, Body)> {
    let named = |prefix: &str, end: char, after: &str| -> Matched<(usize, Body)> {
        let rest = eat(text, prefix)?;
        let Some(n) = rest.find(end) else {
            return Err(if rest.len() < MAX_NAME {
                Miss::Partial
            } else {
                Miss::No
            });
        };
        if n == 0 || n > MAX_NAME {
            return Err(Miss::No);
        }
        eat(&rest[n + 1..], after)?;
        let body = Body::Tagged {
            close: FUNCTION_CLOSE,
            function: Some(rest[..n].to_owned()),
        };
        Ok((prefix.len() + n + 1 + after.len(), body))
    };
    first([named(FUNCTION_EQ, '>', ""), named(FUNCTION_NAME, '"', ">")])
}

/// The call a tagged body makes: the call's JSON, or with `function`, its arguments' JSON.
fn tagged_call(body: &str, function: Option<String>, written: String) -> ParsedCall {
    let Some(name) = function else {
        return parse_call(body).map_err(|e| MalformedCall { written, ..e });
    };
    let malformed = |why: String| MalformedCall {
        raw: body.to_owned(),
        why,
        written: written.clone(),
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(malformed("the function has no name".into()));
    }
    let json = strip_fence(body.trim());
    let arguments = if json.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(json)
            .map_err(|e| malformed(format!("the arguments are not valid JSON: {e}")))?
    };
    let arguments = arguments_of(name, Some(arguments)).map_err(malformed)?;
    Ok(ToolCall {
        name: name.to_owned(),
        arguments,
    })
}

/// An object without a tag is a call when its keys are exactly `name` and `arguments` and
/// they are well-formed; otherwise it is text.
fn bare_call(value: Value) -> Option<ToolCall> {
    let Value::Object(object) = &value else {
        return None;
    };
    let shaped = object.len() == 2 && object.contains_key("arguments");
    shaped.then(|| call_of(value, "").ok()).flatten()
}

/// Parses the text between `<tool_call>` and `</tool_call>`.
pub fn parse_call(body: &str) -> ParsedCall {
    let json = strip_fence(body.trim());
    let value: Value = serde_json::from_str(json).map_err(|e| MalformedCall {
        raw: body.to_owned(),
        why: format!("the call is not valid JSON: {e}"),
        written: body.to_owned(),
    })?;
    call_of(value, body)
}

/// A call's JSON object (`raw`: its text, for the error).
fn call_of(value: Value, raw: &str) -> ParsedCall {
    let malformed = |why: String| MalformedCall {
        raw: raw.to_owned(),
        why,
        written: raw.to_owned(),
    };
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
    let arguments = arguments_of(&name, object.remove("arguments")).map_err(malformed)?;
    Ok(ToolCall { name, arguments })
}

/// A call's `arguments`: an object, a string holding one, or nothing.
fn arguments_of(name: &str, arguments: Option<Value>) -> Result<Map<String, Value>, String> {
    match arguments {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        // Some models write the arguments as a JSON string, as OpenAI's API carries them.
        Some(Value::String(text)) if text.trim().is_empty() => Ok(Map::new()),
        Some(Value::String(text)) => match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(format!(
                "\"arguments\" of {name} must be a JSON object, got the string {text:?}"
            )),
        },
        Some(other) => Err(format!(
            "\"arguments\" of {name} must be a JSON object, got {other}"
        )),
    }
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

    /// Runs `text` in one piece, one char at a time, and split in two at every char boundary:
    /// each gives `shown` and `calls`.
    fn every_split(text: &str, shown: &str, calls: &[ParsedCall]) {
        let (all, found) = run(&[text]);
        assert_eq!((all.as_str(), &found[..]), (shown, calls), "one piece");
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        let (all, found) = run(&pieces);
        assert_eq!((all.as_str(), &found[..]), (shown, calls), "char by char");
        for cut in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let (all, found) = run(&[&text[..cut], &text[cut..]]);
            assert_eq!((all.as_str(), &found[..]), (shown, calls), "cut at {cut}");
        }
    }

    #[test]
    fn nothing_is_held_back_that_cannot_start_a_call() {
        let mut p = ToolCallParser::default();
        assert_eq!(p.push("1 < 2 and <b> {x} `a` b"), "1 < 2 and <b> {x} `a` b");
        assert_eq!(p.push("x <tool"), "x ");
        // `<tools>` opens a call only before `{"name"`.
        assert_eq!(p.push("s>"), "");
        assert_eq!(p.push(" are"), "<tools> are");
    }

    /// The forms llama.cpp's Hermes 2 Pro parser (which it used for SmolLM3) accepts, each
    /// split across tokens anywhere.
    #[test]
    fn llama_cpp_variants_split_at_every_byte() {
        let text = concat!(
            "A<function_call>{\"name\": \"a\", \"arguments\": {\"x\": 1}}</function_call>B\n",
            "<tool> {\"name\": \"b\"} </tool>C\n",
            "```json\n{\"name\": \"c\", \"arguments\": {}}\n```\n",
            "D<function=d>{\"y\": 2}</function>E<function name=\"e\"></function>F\n",
            "{\"name\": \"f\", \"arguments\": \"{\\\"z\\\": 3}\"}G\n",
            "```xml\n<tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call>\n```\n",
            "H<JSON>{\"name\": \"h\", \"arguments\": {}}</JSON>",
            "<tools>\n{\"name\": \"i\"}\n</tools><response>{\"name\": \"j\"}</response>",
            "<json>{\"name\": \"k\"}</json><xml>{\"name\": \"l\"}</xml>.",
        );
        every_split(
            text,
            "AB\nC\n\nDEF\nG\n\nH.",
            &[
                call("a", json!({"x": 1})),
                call("b", json!({})),
                call("c", json!({})),
                call("d", json!({"y": 2})),
                call("e", json!({})),
                call("f", json!({"z": 3})),
                call("g", json!({})),
                call("h", json!({})),
                call("i", json!({})),
                call("j", json!({})),
                call("k", json!({})),
                call("l", json!({})),
            ],
        );
    }

    #[test]
    fn text_that_is_not_a_call_stays_text() {
        for text in [
            "<json>not a call</json> and <response>a reply</response>",
            "Here: {\"name\": \"Ada\", \"born\": 1815}.",
            "```json\n{\"name\": \"Ada\"}\n```",
            "```python\nprint({1: 2})\n```",
            "{\"name\" oops} and <function=> and <function>x</function>",
            "The end: {\"name\": \"x\", \"arguments\": {}",
            "```\n",
        ] {
            every_split(text, text, &[]);
        }
    }

    #[test]
    fn function_forms_say_what_is_wrong_and_may_stay_unclosed() {
        let (shown, calls) = run(&[
            "<function=calc>[1]</function><function name=\"calc\">{oops</function>",
            "<function= >{}</function><function=now>{}",
        ]);
        assert_eq!(shown, "");
        let whys: Vec<&str> = calls
            .iter()
            .map(|c| match c {
                Ok(_) => "ok",
                Err(e) => e.why.as_str(),
            })
            .collect();
        assert!(
            whys[0].contains("must be a JSON object, got [1]"),
            "{whys:?}"
        );
        assert!(whys[1].contains("not valid JSON"), "{whys:?}");
        assert_eq!(whys[2], "the function has no name");
        assert_eq!(calls[3], call("now", json!({})));
        // A malformed call keeps the text as written, for whoever shows it.
        let Err(e) = &calls[1] else { panic!() };
        assert_eq!(e.written, "<function name=\"calc\">{oops</function>");
        assert_eq!(e.raw, "{oops");
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
