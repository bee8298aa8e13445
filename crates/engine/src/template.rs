//! Chat templates: a model's `tokenizer.chat_template` rendered with minijinja as Hugging Face
//! transformers renders it with jinja2 (sandboxed, `trim_blocks`, `lstrip_blocks`, loop controls,
//! `{% generation %}`, `strftime_now`, `raise_exception`, its own `tojson`). Python behaviour
//! templates can see is added: `str`/`dict` methods via `pycompat`, Python's `str()` of dicts,
//! lists and floats for `{{ x }}` and `| string`, `json.dumps` layout for `tojson`. Still
//! different: maps iterate in sorted key order (Python: insertion order); `~` and `join` print
//! containers minijinja's way; `strip()`/`split()` do not treat U+001C..U+001F as whitespace.
//!
//! Templates come from model files and are untrusted. Rendering is bounded by fuel, minijinja's
//! recursion limit, caps on output size and printed nesting, and a large dedicated stack
//! (minijinja drops and prints nested values recursively). minijinja 3 charges fuel for the data
//! a template creates and the items operations visit, so fuel bounds memory and time as well.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Name under which the template is registered; it appears in error messages (`chat_template:12`).
const TEMPLATE_NAME: &str = "chat_template";
/// Instructions one render may execute. A SmolLM3 turn costs ~32 (SmolLM2 ~23), so this allows
/// thousands of turns, and stops a runaway loop within milliseconds. It also caps the data a
/// render creates (~64 bytes a unit, so ~13 MB) and how deep it can nest lists.
const FUEL: u64 = 200_000;
/// Stack of the render thread: a template can nest a list about one level deep per fuel, and
/// minijinja frees and prints nested lists recursively (up to ~400 bytes of stack a level,
/// measured), so FUEL levels need ~80 MiB. Untouched stack pages cost no memory.
const RENDER_STACK_BYTES: usize = 128 << 20;
/// Largest rendered prompt we accept: far beyond any context window, small enough not to matter.
pub const MAX_OUTPUT_BYTES: usize = 4 << 20;
/// Nesting depth at which printing a list/dict (`str()`, `tojson`) gives up rather than recurse.
const MAX_NESTING: usize = 128;

/// One chat turn as the templates see it (`message.role`, `message.content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        let (role, content) = (role.into(), content.into());
        ChatMessage { role, content }
    }
}

/// Template variables beyond the messages. `None` leaves a variable undefined so that the
/// template's own default applies (e.g. SmolLM3's `enable_thinking is not defined`).
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    pub add_generation_prompt: bool,
    pub enable_thinking: Option<bool>,
    /// Passed as `tools`; like transformers, `tools` is `none` (defined) when absent.
    pub tools: Option<serde_json::Value>,
    pub xml_tools: Option<serde_json::Value>,
    pub python_tools: Option<serde_json::Value>,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token` and `eos_token`, as transformers passes them to every render.
    special_tokens: [(&'static str, String); 2],
    /// See [`ChatTemplate::supports_tools`].
    supports_tools: bool,
}

impl ChatTemplate {
    /// Compiles `source`; syntax errors are reported here, with their line.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(template_error)?;
        env.set_syntax(syntax);
        // jinja2's default `Undefined`: prints empty, iterates empty, is falsy, attribute errors.
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _, value| {
            out.write_str(&python_str(value)?)
                .map_err(|_| output_too_large())
        });
        // `pprint` too: minijinja's is quadratic in nesting; Python's is repr below 80 columns.
        for name in ["string", "pprint"] {
            env.add_filter(name, |value: &Value| python_str(value));
        }
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |message: String| {
            Err::<(), _>(invalid(message))
        });
        env.add_template_owned(TEMPLATE_NAME, preprocess(source))
            .map_err(template_error)?;
        let special_tokens = [
            ("bos_token", bos_token.into()),
            ("eos_token", eos_token.into()),
        ];
        Ok(ChatTemplate {
            env,
            special_tokens,
            supports_tools: source.contains("xml_tools"),
        })
    }

    /// Whether the template shows the model the tools it is given: SmolLM3's lists `xml_tools`
    /// in its system turn. A template without them (SmolLM2's) would drop them silently, and
    /// the model would never have seen how to call one.
    pub fn supports_tools(&self) -> bool {
        self.supports_tools
    }

    /// Renders with an arbitrary context object (e.g. a `context` of templates.json);
    /// `bos_token` and `eos_token` are added unless the context has them. `strftime_now` formats
    /// `today` at midnight (transformers uses the current local time).
    pub fn render_value(&self, context: &serde_json::Value, today: NaiveDate) -> Result<String> {
        let failed = |what: String| EngineError::Template(what);
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("chat-template".into())
                .stack_size(RENDER_STACK_BYTES)
                .spawn_scoped(scope, || self.render_here(context, today))
                .map_err(|e| failed(format!("cannot start the render thread: {e}")))?
                .join()
                .map_err(|_| failed("the template engine panicked".into()))?
        })
    }

    fn render_here(&self, context: &serde_json::Value, today: NaiveDate) -> Result<String> {
        let mut map = context.as_object().cloned().ok_or_else(|| {
            EngineError::Template("the template context must be a JSON object".into())
        })?;
        for (key, token) in &self.special_tokens {
            map.entry(*key).or_insert_with(|| token.as_str().into());
        }

        // `strftime_now` depends on the caller's date, so it goes into a cheap clone of the
        // environment (filters, globals and the compiled template are shared).
        let mut env = self.env.clone();
        let now = today.and_time(NaiveTime::MIN);
        env.add_function("strftime_now", move |format: &str| strftime(now, format));

        let template = env.get_template(TEMPLATE_NAME).map_err(template_error)?;
        let mut out = CappedWriter(Vec::new());
        template
            .render_captured_to(Value::from(minijinja::value::Serde(&map)), &mut out)
            .map_err(template_error)?;
        String::from_utf8(out.0)
            .map_err(|_| EngineError::Template("rendered text is not valid UTF-8".into()))
    }

    /// Renders a conversation with the variables transformers' `apply_chat_template` passes.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        opts: &ChatOptions,
        today: NaiveDate,
    ) -> Result<String> {
        let mut context = serde_json::json!({
            "messages": messages,
            "add_generation_prompt": opts.add_generation_prompt,
            "tools": opts.tools,
            "documents": null,
        });
        // Passed only when set, as keyword arguments to `apply_chat_template` would be.
        let thinking = opts.enable_thinking.map(serde_json::Value::Bool);
        for (key, value) in [
            ("enable_thinking", &thinking),
            ("xml_tools", &opts.xml_tools),
            ("python_tools", &opts.python_tools),
        ] {
            if let Some(value) = value {
                context[key] = value.clone();
            }
        }
        self.render_value(&context, today)
    }
}

/// The template used for a model whose file has none (no `tokenizer.chat_template`, or an empty
/// one), as llama.cpp does: `common_chat_templates_init` falls back to its `CHATML_TEMPLATE_SRC`
/// when the model's template is missing or empty. Same output as that source.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages -%}\n  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n  {{- '<|im_start|>assistant\\n' -}}\n{%- endif -%}";

/// The text of the message [`ChatTemplate::probe`] renders; its render must contain it.
const PROBE_TEXT: &str = "Hello";

impl ChatTemplate {
    /// Renders a one-message conversation, so that a template that cannot (an error raised at
    /// run time, a loop that runs out of fuel, output past the cap) or that leaves the message
    /// out (an empty render, a fixed text) is refused when the model is loaded, naming its cause,
    /// rather than failing or ignoring every message after.
    pub fn probe(&self) -> Result<()> {
        let messages = [ChatMessage::new("user", PROBE_TEXT)];
        let opts = ChatOptions {
            add_generation_prompt: true,
            ..ChatOptions::default()
        };
        let today = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap_or_default();
        match self.render(&messages, &opts, today) {
            Ok(text) if text.contains(PROBE_TEXT) => Ok(()),
            Ok(text) if text.trim().is_empty() => Err(EngineError::Template(format!(
                "it renders a one-message conversation as {}: the model would be sent no prompt",
                match text.is_empty() {
                    true => "nothing".to_owned(),
                    false => format!("only whitespace ({} bytes)", text.len()),
                }
            ))),
            Ok(text) => Err(EngineError::Template(format!(
                "it renders a one-message conversation without the message's text \
                 ({PROBE_TEXT:?} is missing from {:?}): the model would never see what is asked",
                truncated(&text, 200)
            ))),
            Err(EngineError::Template(m)) => Err(EngineError::Template(format!(
                "it cannot render a one-message conversation: {m}"
            ))),
            Err(other) => Err(other),
        }
    }
}

/// At most `max` bytes of `text` (cut at a character boundary), with `…` when cut.
fn truncated(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    Cow::Owned(format!("{}…", &text[..end]))
}

/// Turns a minijinja error (with its cause chain) into the engine's error.
fn template_error(err: Error) -> EngineError {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let _ = write!(message, ": {cause}");
        source = cause.source();
    }
    EngineError::Template(message)
}

fn invalid(message: impl Into<Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

/// Python's `datetime.strftime`, for the directives chrono shares with it.
fn strftime(now: NaiveDateTime, format: &str) -> Result<String, Error> {
    let mut out = String::new();
    write!(out, "{}", now.format(format))
        .map_err(|_| invalid(format!("strftime_now: unsupported format {format:?}")))?;
    Ok(out)
}

fn output_too_large() -> Error {
    invalid(format!("rendered output exceeds {MAX_OUTPUT_BYTES} bytes"))
}

/// The render target: a buffer that refuses to grow past [`MAX_OUTPUT_BYTES`].
struct CappedWriter(Vec<u8>);

impl io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT_BYTES {
            return Err(io::Error::other(output_too_large()));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Prepares a template source for minijinja as jinja2's lexer sees it. jinja2 first turns every
/// `\r\n` and `\r` into `\n` (so `trim_blocks` eats a whole `\r\n`); so does this. Then every
/// `{% generation %}` / `{% endgeneration %}` tag is renamed `with` / `endwith`, keeping
/// delimiters, `-`/`+` markers and all other bytes: both lexers apply `trim_blocks`,
/// `lstrip_blocks` and `-`/`+` from the delimiters alone, whatever the tag name, so the output
/// whitespace is unchanged. `with` renders its body inline (transformers' `_generation_support`
/// returns `caller()` as is) and scopes `set` to it as the caller macro does. No newline is added
/// or removed (error lines still match); comments, `raw` blocks and string literals are skipped.
fn preprocess(source: &str) -> String {
    let source = &source.replace("\r\n", "\n").replace('\r', "\n");
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut copied = 0; // bytes of `source` already copied to `out`
    let mut pos = 0;
    while let Some(offset) = source[pos..].find('{') {
        let start = pos + offset;
        pos = match bytes.get(start + 1) {
            Some(b'#') => source[start + 2..]
                .find("#}")
                .map_or(bytes.len(), |end| start + 2 + end + 2),
            Some(b'{') => skip_code(bytes, start + 2, b'}'),
            Some(b'%') => {
                let (name_start, name_end) = tag_name(bytes, start + 2);
                let name = &source[name_start..name_end];
                let end = skip_code(bytes, name_end, b'%');
                let tail =
                    source[name_end..end].trim_start_matches(|c: char| c.is_ascii_whitespace());
                match (name, tail) {
                    ("generation" | "endgeneration", "%}" | "-%}" | "+%}") => {
                        out.push_str(&source[copied..name_start]);
                        out.push_str(&name.replace("generation", "with"));
                        copied = name_end;
                        end
                    }
                    // jinja2 never applies trim_blocks after `{% raw %}`; `+%}` tells minijinja.
                    ("raw", "%}") => {
                        out.push_str(&source[copied..end - 2]);
                        out.push('+');
                        copied = end - 2;
                        find_endraw(source, end)
                    }
                    ("raw", _) => find_endraw(source, end),
                    _ => end,
                }
            }
            _ => start + 1,
        };
    }
    out.push_str(&source[copied..]);
    out
}

/// Start and end of the tag name after a `{%` (and its optional `-`/`+` marker).
fn tag_name(bytes: &[u8], i: usize) -> (usize, usize) {
    let i = i + usize::from(matches!(bytes.get(i), Some(b'-' | b'+')));
    let rest = bytes.get(i..).unwrap_or_default();
    let start = i + rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let rest = bytes.get(start..).unwrap_or_default();
    let len = rest
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    (start, start + len)
}

/// Index just past the `{% endraw %}` tag that closes a raw block whose body starts at `from`.
fn find_endraw(source: &str, from: usize) -> usize {
    let bytes = source.as_bytes();
    (from..bytes.len())
        .filter(|&i| bytes[i..].starts_with(b"{%"))
        .find_map(|i| {
            let (start, end) = tag_name(bytes, i + 2);
            (&bytes[start..end] == b"endraw").then(|| skip_code(bytes, end, b'%'))
        })
        .unwrap_or(bytes.len())
}

/// Index just past the `}}` or `%}` (`close` is its first byte) that ends the expression or tag
/// starting at `i`, skipping string literals and bracketed expressions as the lexer does.
fn skip_code(bytes: &[u8], mut i: usize, close: u8) -> usize {
    let mut depth = 0usize;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\'' | b'"' => {
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b {
                        break;
                    }
                }
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' if depth > 0 => depth -= 1,
            _ if b == close && depth == 0 && bytes.get(i + 1) == Some(&b'}') => return i + 2,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// Python's `str(value)`: strings as they are, undefined as empty, everything else as `repr`.
fn python_str(value: &Value) -> Result<String, Error> {
    let mut out = String::new();
    match (value.kind(), value.as_str()) {
        (ValueKind::String, Some(s)) => out.push_str(s),
        (ValueKind::Undefined, _) => {}
        _ => write_value(value, &PYTHON_REPR, 0, &mut out)?,
    }
    Ok(out)
}

/// How [`write_value`] prints: Python's `repr` or `json.dumps` with the given options.
struct Layout {
    json: bool,
    indent: Option<String>,
    item_sep: &'static str,
}

const PYTHON_REPR: Layout = Layout {
    json: false,
    indent: None,
    item_sep: ", ",
};

/// Writes `value` as Python would: `{'a': [1, 2.5, None, True]}` or `{"a": [1, 2.5, null, true]}`.
fn write_value(value: &Value, fmt: &Layout, depth: usize, out: &mut String) -> Result<(), Error> {
    if depth > MAX_NESTING {
        return Err(invalid("value nested too deeply to print"));
    }
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(output_too_large());
    }
    let is_map = match value.kind() {
        ValueKind::Map => true,
        ValueKind::Seq => false,
        _ => return write_scalar(value, fmt, out),
    };
    let newline = |out: &mut String, depth: usize| {
        if let Some(indent) = &fmt.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth));
        }
    };
    let items: Vec<Value> = value.try_iter()?.collect();
    out.push(if is_map { '{' } else { '[' });
    for (i, item) in items.iter().enumerate() {
        out.push_str(if i > 0 { fmt.item_sep } else { "" });
        newline(out, depth + 1);
        if is_map {
            match (fmt.json, item.as_str()) {
                // json.dumps turns non-string keys into strings.
                (true, None) => write_scalar(&Value::from(item.to_string()), fmt, out)?,
                _ => write_scalar(item, fmt, out)?,
            }
            out.push_str(": ");
            write_value(&value.get_item(item)?, fmt, depth + 1, out)?;
        } else {
            write_value(item, fmt, depth + 1, out)?;
        }
    }
    if !items.is_empty() {
        newline(out, depth);
    }
    out.push(if is_map { '}' } else { ']' });
    Ok(())
}

fn write_scalar(value: &Value, fmt: &Layout, out: &mut String) -> Result<(), Error> {
    match (value.kind(), value.as_str(), fmt.json) {
        (ValueKind::String, Some(s), false) => python_quote(s, out),
        // serde_json escapes exactly what Python's json does (with `ensure_ascii=False`).
        (ValueKind::String, Some(s), true) => {
            out.push_str(&serde_json::to_string(s).map_err(|_| output_too_large())?)
        }
        (ValueKind::Number, _, _) if !value.is_integer() => {
            let text = python_float(f64::try_from(value.clone())?);
            out.push_str(match (text.as_str(), fmt.json) {
                ("nan", true) => "NaN",
                ("inf", true) => "Infinity",
                ("-inf", true) => "-Infinity",
                (text, _) => text,
            });
        }
        (ValueKind::None, _, true) => out.push_str("null"),
        (ValueKind::Bool, _, true) => out.push_str(if value.is_true() { "true" } else { "false" }),
        // Integers, None, True and False already print as Python's `repr` does.
        (ValueKind::Number, _, _) | (_, _, false) => {
            let _ = write!(out, "{value}");
        }
        (kind, _, true) => return Err(invalid(format!("tojson: {kind} values are not JSON"))),
    }
    Ok(())
}

/// Python's quoting of a `str` in `repr`: single quotes unless only double quotes avoid escaping.
fn python_quote(s: &str, out: &mut String) {
    let quote = match (s.contains('\''), s.contains('"')) {
        (true, false) => '"',
        _ => '\'',
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c < ' ' || ('\x7f'..='\u{a0}').contains(&c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form outside 1e-4..1e16.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sci = format!("{f:e}"); // Rust's `{:e}` also prints the shortest round-trip digits
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..16).contains(&exponent) {
        let fixed = f.to_string();
        if fixed.contains('.') {
            fixed
        } else {
            fixed + ".0"
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, which unlike jinja2's own does not HTML-escape and puts spaces after `,`
/// and `:`. `sort_keys` is a no-op (maps iterate in sorted key order here); `ensure_ascii=True`
/// and `separators` are refused rather than ignored.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, Error> {
    // An integer indent means that many spaces (none if negative); capped, since it is repeated.
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.clamp(0, 64) as usize)),
            (None, Some(s)) if s.len() <= 64 => Some(s.to_owned()),
            _ => return Err(invalid("tojson: indent must be a number or a short string")),
        },
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    if kwargs.get::<Option<bool>>("ensure_ascii")? == Some(true) {
        return Err(invalid("tojson(ensure_ascii=True) is not supported"));
    }
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let layout = Layout {
        json: true,
        indent,
        item_sep,
    };
    let mut out = String::new();
    write_value(value, &layout, 0, &mut out)?;
    Ok(out)
}
