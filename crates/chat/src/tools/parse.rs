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
//! llama.cpp takes any of these anywhere in the text; here only SmolLM3's own tag and the
//! `<function…>` forms do, because built-in tools run without approval and an answer may well
//! show or explain a tool call (`Example: {"tool_calls": [{"name": "calculator", …}]}`) or use
//! `<json>`/`<response>` for other things. So:
//!
//! - `<tool_call>` (SmolLM3's own tag): everything up to `</tool_call>` is a call, as before:
//!   whitespace and a Markdown ```json fence inside the tags are allowed, `arguments` may be an
//!   object, a string holding one, or absent; anything else is a [`MalformedCall`] (it goes back
//!   to the model as an error and is never shown as answer text). Unlike llama.cpp, `"name"`
//!   need not be the first key.
//! - `<function=NAME>{args}</function>` and `<function name="NAME">{args}</function>`: the body
//!   is the arguments object (empty: none), else a [`MalformedCall`].
//! - The other tags (`<function_call>`, `<tool>`, `<tools>`, `<response>`, `<json>`, `<xml>`,
//!   `<JSON>`) are considered only when `{"name"` follows the tag (llama.cpp's rule), and hold a
//!   call only when everything up to their close tag (`</json>`…) is one exact call: a JSON
//!   object (whitespace around it allowed) whose keys are exactly `name` (a non-empty string)
//!   and `arguments` (an object, or a string holding one). Anything else
//!   (`<json>{"name": "John", "age": 30}</json>`), and one still open when the answer ends, is
//!   text, tags included, as written.
//! - A JSON object without a tag is a call only when it is the first thing in the answer
//!   (whitespace before it and a fence around it allowed) and is an exact call as above. An
//!   object after any other text, or nested in another value (`{"tool_calls": [{"name": …}]}`),
//!   is text, as is an unfinished or invalid one.
//! - A fence (```` ``` ````, ```` ```json ````, ```` ```xml ````, then a newline) right before any of
//!   the JSON forms belongs to the call, with its closing ```` ``` ```` after it (when it follows).
//! - A `<tool_call>` or `<function…>` call left unclosed at the end of the answer counts when
//!   its body is complete.
//! - While an untagged object or another tag's body is undecided it is held back, at most
//!   [`MAX_HELD`] bytes: past that it was never clearly a call, and is shown as text (what
//!   follows its tag or `{` is read again, so a `<tool_call>` in it still counts).
//!
//! llama.cpp also drops whitespace after a call and, when any call is incomplete at the end,
//! keeps the whole answer as text; here the text around calls is kept as written and each call
//! stands on its own.

use serde::de::IgnoredAny;
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
/// The most text held back while deciding whether an untagged object, or the body of a tag other
/// than SmolLM3's own, is a call: past it, it is shown as text. Bounds how long the answer stalls
/// and how much is parsed again as pieces arrive.
const MAX_HELD: usize = 8 * 1024;

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
    /// Up to `close`. With `function` (the name from `<function=…>`), the body is the
    /// arguments; with `strict` (a tag other than SmolLM3's own), a body that is not exactly a
    /// call is text; otherwise it is a call or a [`MalformedCall`]. `searched`: the bytes of the
    /// body already looked through for `close`.
    Tagged {
        close: &'static str,
        function: Option<String>,
        strict: bool,
        searched: usize,
    },
    /// A JSON object with no tag, at the start of the answer: a call when it is complete and an
    /// exact call, else text.
    Bare(Scan),
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
    /// Whether anything but whitespace came before `pending`: an untagged call may only come
    /// first.
    begun: bool,
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

    /// Shows the first `n` bytes of the pending text.
    fn release(&mut self, n: usize, shown: &mut String) {
        let text = &self.pending[..n];
        self.begun |= !text.trim().is_empty();
        shown.push_str(text);
        self.pending.drain(..n);
    }

    /// Moves past one part of the pending text (text, a header, a call, a closing fence);
    /// false when what is left must wait for more.
    fn advance(&mut self, shown: &mut String) -> bool {
        match std::mem::take(&mut self.state) {
            State::Outside => match find_start(&self.pending, self.begun) {
                Start::None => {
                    self.release(self.pending.len(), shown);
                    false
                }
                Start::Maybe(at) => {
                    self.release(at, shown);
                    false
                }
                Start::At(at, Header { len, body, fenced }) => {
                    self.release(at, shown);
                    self.begun = true;
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
                body:
                    Body::Tagged {
                        close,
                        function,
                        strict,
                        searched,
                    },
                header,
                fenced,
            } => {
                let Some(end) = find_from(&self.pending, close, searched) else {
                    if strict && self.pending.len() > MAX_HELD {
                        // Never clearly a call: the tag is text, and what follows is read again.
                        shown.push_str(&header);
                        return true;
                    }
                    let searched = self.pending.len();
                    self.state = State::Inside {
                        body: Body::Tagged {
                            close,
                            function,
                            strict,
                            searched,
                        },
                        header,
                        fenced,
                    };
                    return false;
                };
                let text: String = self.pending.drain(..end).collect();
                self.pending.drain(..close.len());
                let written = format!("{header}{text}{close}");
                if !strict {
                    self.calls.push(tagged_call(&text, function, written));
                } else if let Some(call) = wrapped_call(&text) {
                    self.calls.push(Ok(call));
                } else {
                    shown.push_str(&written);
                    return true;
                }
                self.state = if fenced { State::Fence } else { State::Outside };
                true
            }
            State::Inside {
                body: Body::Bare(mut scan),
                header,
                fenced,
            } => {
                let Some(end) = scan.end(&self.pending) else {
                    if self.pending.len() <= MAX_HELD && !scan.broken(&self.pending) {
                        self.state = State::Inside {
                            body: Body::Bare(scan),
                            header,
                            fenced,
                        };
                        return false;
                    }
                    // Not JSON, or never clearly a call: text, read again after its `{`.
                    shown.push_str(&header);
                    shown.extend(self.pending.drain(..1));
                    return true;
                };
                match serde_json::from_str(&self.pending[..end]) {
                    Ok(value) => {
                        let text: String = self.pending.drain(..end).collect();
                        match exact_call(value) {
                            Some(call) => {
                                self.calls.push(Ok(call));
                                self.state = if fenced { State::Fence } else { State::Outside };
                            }
                            None => {
                                shown.push_str(&header);
                                shown.push_str(&text);
                            }
                        }
                    }
                    // Not JSON: text, read again after its `{`.
                    Err(_) => {
                        shown.push_str(&header);
                        shown.extend(self.pending.drain(..1));
                    }
                }
                true
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
    /// `<tool_call>` or `<function…>` call counts when its body is a complete call; otherwise it
    /// is malformed. An unclosed other tag and an unfinished untagged object are text.
    pub fn finish(&mut self) -> (String, Vec<ParsedCall>) {
        let pending = std::mem::take(&mut self.pending);
        let shown = match std::mem::take(&mut self.state) {
            State::Outside | State::Fence => pending,
            State::Inside {
                body:
                    Body::Tagged {
                        close,
                        function,
                        strict: false,
                        ..
                    },
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
                body: Body::Tagged { strict: true, .. } | Body::Bare(_),
                header,
                ..
            } => header + &pending,
        };
        (shown, self.take_calls())
    }
}

/// Where `pat` is in `text`, of which the first `searched` bytes were looked through before.
fn find_from(text: &str, pat: &str, searched: usize) -> Option<usize> {
    // `pat` may have begun in the last bytes looked through.
    let mut from = searched.saturating_sub(pat.len()).min(text.len());
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    text[from..].find(pat).map(|at| from + at)
}

/// Reads an untagged JSON object as it streams, each byte once, to find where it ends.
#[derive(Debug, Default)]
struct Scan {
    /// Bytes read so far.
    read: usize,
    /// Brackets open outside strings.
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// The length at which the text was last parsed by [`Scan::broken`].
    checked: usize,
}

impl Scan {
    /// The length of the value at the start of `text` once its outer brackets close.
    fn end(&mut self, text: &str) -> Option<usize> {
        for &byte in &text.as_bytes()[self.read..] {
            self.read += 1;
            if self.in_string {
                match byte {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(self.read);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Whether `text`, an unclosed value so far, is already not JSON. Parsed again only each
    /// time it has doubled, so a long value is parsed in linear time overall.
    fn broken(&mut self, text: &str) -> bool {
        if text.len() < 2 * self.checked {
            return false;
        }
        self.checked = text.len();
        matches!(serde_json::from_str::<IgnoredAny>(text), Err(e) if !e.is_eof())
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

/// `begun`: whether anything but whitespace came before `text`, which rules out an untagged
/// call.
fn find_start(text: &str, begun: bool) -> Start {
    let first = (!begun).then(|| text.len() - text.trim_start().len());
    for (at, byte) in text.bytes().enumerate() {
        if !matches!(byte, b'<' | b'`' | b'{') {
            continue;
        }
        match header(&text[at..], first == Some(at)) {
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

/// `bare`: whether an untagged call may start here (the first thing in the answer).
fn header(text: &str, bare: bool) -> Matched<Header> {
    match fence(text) {
        Ok(after) => {
            let (len, body) = json_start(after, bare)?;
            Ok(Header {
                len: text.len() - after.len() + len,
                body,
                fenced: true,
            })
        }
        Err(Miss::Partial) => Err(Miss::Partial),
        Err(Miss::No) => {
            let (len, body) = first([json_start(text, bare), function_start(text)])?;
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

/// A tag and `{"name"`, or with `bare`, `{"name"` alone (the header is then empty: the body is
/// the object).
fn json_start(text: &str, bare: bool) -> Matched<(usize, Body)> {
    let tagged = TAGS.iter().map(|&(open, close)| {
        let rest = eat(text, open)?;
        // SmolLM3's own tag always opens a call; the others only before `{"name"`.
        let strict = open != OPEN;
        if strict {
            named_object(rest)?;
        }
        Ok((
            open.len(),
            Body::Tagged {
                close,
                function: None,
                strict,
                searched: 0,
            },
        ))
    });
    let untagged = match bare {
        true => named_object(text).map(|()| (0, Body::Bare(Scan::default()))),
        false => Err(Miss::No),
    };
    first(tagged.chain([untagged]))
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
            strict: false,
            searched: 0,
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

/// The body of a tag other than SmolLM3's own (it starts with `{"name"`): a call when it is
/// exactly one (see [`exact_call`]).
fn wrapped_call(body: &str) -> Option<ToolCall> {
    serde_json::from_str(body).ok().and_then(exact_call)
}

/// A call written without SmolLM3's tag is one only when its keys are exactly `name` (a
/// non-empty string) and `arguments` (an object, or a string holding one); otherwise it is text.
fn exact_call(value: Value) -> Option<ToolCall> {
    let Value::Object(object) = &value else {
        return None;
    };
    let shaped = object.len() == 2
        && object.contains_key("name")
        && matches!(
            object.get("arguments"),
            Some(Value::Object(_) | Value::String(_))
        );
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
            "<tool> {\"name\": \"b\", \"arguments\": {}} </tool>C\n",
            "D<function=d>{\"y\": 2}</function>E<function name=\"e\"></function>F\n",
            "```xml\n<tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call>\n```\n",
            "H<JSON>{\"name\": \"h\", \"arguments\": {}}</JSON>",
            "<tools>\n{\"name\": \"i\", \"arguments\": \"{\\\"z\\\": 3}\"}\n</tools>",
            "<response>{\"name\": \"j\", \"arguments\": {}}</response>",
            "```json\n<json>{\"name\": \"k\", \"arguments\": {}}</json>\n```",
            "<xml>{\"name\": \"l\", \"arguments\": {}}</xml>.",
        );
        every_split(
            text,
            "AB\nC\nDEF\n\nH.",
            &[
                call("a", json!({"x": 1})),
                call("b", json!({})),
                call("d", json!({"y": 2})),
                call("e", json!({})),
                call("g", json!({})),
                call("h", json!({})),
                call("i", json!({"z": 3})),
                call("j", json!({})),
                call("k", json!({})),
                call("l", json!({})),
            ],
        );
    }

    /// An untagged call counts when it is the first thing in the answer, bare or fenced.
    #[test]
    fn an_untagged_call_at_the_start_of_the_answer() {
        every_split(
            " \n{\"name\": \"f\", \"arguments\": \"{\\\"z\\\": 3}\"}G",
            " \nG",
            &[call("f", json!({"z": 3}))],
        );
        every_split(
            "\n```json\n{\"name\": \"c\", \"arguments\": {}}\n```\nDone",
            "\n\nDone",
            &[call("c", json!({}))],
        );
        // Whitespace in pieces of its own before it is still the start.
        let mut p = ToolCallParser::default();
        assert_eq!(p.push("  "), "  ");
        assert_eq!(p.push("\n"), "\n");
        assert_eq!(p.push("{\"name\": \"now\", "), "");
        assert_eq!(p.push("\"arguments\": {}}"), "");
        assert_eq!(p.finish(), (String::new(), vec![call("now", json!({}))]));
    }

    /// Regression: any object with keys `name` and `arguments`, anywhere (even nested), was run
    /// as a call, so an answer explaining tool calls made one; and the other tags took any
    /// object, so `<json>{"name": "John", ...}</json>` called a tool "John" and vanished.
    #[test]
    fn json_that_is_not_clearly_a_call_stays_text() {
        for text in [
            // Untagged: nested, after text, or after the first thing.
            "Example: {\"tool_calls\": [{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2+2\"}}]}",
            "{\"tool_calls\": [{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2+2\"}}]}",
            "[{\"name\": \"calculator\", \"arguments\": {}}]",
            "Call it as {\"name\": \"calculator\", \"arguments\": {\"expression\": \"2+2\"}}.",
            "A fence:\n```json\n{\"name\": \"calculator\", \"arguments\": {}}\n```",
            "{\"name\": \"Ada\", \"born\": 1815} {\"name\": \"now\", \"arguments\": {}}",
            "{\"name\": \"now\", \"arguments\": null}",
            // The other tags: not exactly name and arguments, or left open.
            "<json>{\"name\": \"John\", \"age\": 30}</json>",
            "<response>{\"name\": \"now\"}</response> and <tool>{\"name\": \"\", \"arguments\": {}}</tool>",
            "<json>{\"name\": \"calc\", \"arguments\": [1]}</json><xml>{\"name\": \"calc\", \"arguments\": \"2+2\"}</xml>",
            "<tools>{\"name\": \"a\", \"arguments\": {}} {\"name\": \"b\", \"arguments\": {}}</tools>",
            "```json\n<json>{\"name\": \"John\"}</json>\n```",
            "<response>{\"name\": \"Ada\", \"arguments\": {}}, she said. The rest of the answer.",
        ] {
            every_split(text, text, &[]);
        }
        // A call after the first thing still counts when SmolLM3's tag says so.
        every_split(
            "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>{\"name\": \"b\", \"arguments\": {}}",
            "{\"name\": \"b\", \"arguments\": {}}",
            &[call("a", json!({}))],
        );
    }

    /// Regression: text held back while an untagged object or another tag's body was undecided
    /// grew without end, parsed again on every piece.
    #[test]
    fn what_is_held_back_is_capped() {
        for open in [
            "{\"name\": \"x\", \"arguments\": {\"text\": \"",
            "<json>{\"name\": \"x\", \"arguments\": {\"text\": \"",
        ] {
            let mut p = ToolCallParser::default();
            let mut shown = p.push(open);
            assert_eq!(shown, "", "{open}");
            let filler = "abcd".repeat(MAX_HELD / 4);
            for piece in filler.as_bytes().chunks(4) {
                shown.push_str(&p.push(std::str::from_utf8(piece).unwrap()));
            }
            // Released before the answer ends, and as written.
            assert!(
                shown.len() > MAX_HELD - open.len() - 8,
                "{open}: {}",
                shown.len()
            );
            let (tail, calls) = p.finish();
            assert_eq!(shown + &tail, format!("{open}{filler}"));
            assert!(calls.is_empty(), "{calls:?}");
        }
        // A call just under the cap still counts.
        let big = "a".repeat(MAX_HELD - 100);
        let text = format!("{{\"name\": \"x\", \"arguments\": {{\"t\": \"{big}\"}}}}");
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(
            run(&pieces),
            (String::new(), vec![call("x", json!({"t": big}))])
        );
        // After the cap, a `<tool_call>` in what was held back is still a call.
        let text =
            format!("<json>{{\"name\": {big}{big} <tool_call>{{\"name\": \"now\"}}</tool_call>!");
        let (shown, calls) = run(&[&text[..MAX_HELD + 10], &text[MAX_HELD + 10..]]);
        assert_eq!(shown, format!("<json>{{\"name\": {big}{big} !"));
        assert_eq!(calls, [call("now", json!({}))]);
    }

    /// An untagged object that is not JSON is shown as soon as that is clear, not at the cap.
    #[test]
    fn an_untagged_object_that_is_not_json_is_not_held_back() {
        let mut p = ToolCallParser::default();
        assert_eq!(p.push("{\"name\" is a key"), "{\"name\" is a key");
        let mut p = ToolCallParser::default();
        let mut shown = String::new();
        for piece in ["{", "\"na", "me\": ", "oops", " and then", " more"] {
            shown.push_str(&p.push(piece));
        }
        assert_eq!(shown, "{\"name\": oops and then more");
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
