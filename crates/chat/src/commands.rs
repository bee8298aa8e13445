//! Slash commands typed in the composer: parsing, the palette's suggestions, and the replies.
//!
//! A command and its reply are stored in the chat (kind `command`, so they survive a reload)
//! but never reach the model or the search index. `/reset` stores a `reset` marker instead:
//! the model sees only what follows it, and the engine's KV cache is emptied. Text starting
//! with `//` is an ordinary message that starts with `/`.

use serde::{Deserialize, Serialize};

/// A command the composer understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Status,
    Model,
    Reset,
    /// `/think [TOKENS]`: the argument as typed (a thinking budget for the chat, or none).
    Think(String),
    NoThink,
    Search(String),
    Export,
    Quote,
}

/// What the composer's text is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A message for the model.
    Message(String),
    Command(Command),
    /// `/something` that is no command; `closest` is the likely intended one.
    Unknown {
        name: String,
        closest: Option<&'static str>,
    },
}

/// A command as the palette and `/help` list it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSuggestion {
    /// With its slash: `/status`.
    pub name: String,
    /// How to type it: `/search QUERY`.
    pub usage: String,
    pub description: String,
}

struct Spec {
    name: &'static str,
    args: &'static str,
    description: &'static str,
}

const COMMANDS: &[Spec] = &[
    Spec {
        name: "help",
        args: "",
        description: "List the commands",
    },
    Spec {
        name: "status",
        args: "",
        description: "Model, device, threads, context used and speed",
    },
    Spec {
        name: "model",
        args: "",
        description: "Details of the loaded model",
    },
    Spec {
        name: "reset",
        args: "",
        description: "Start a fresh context: the model forgets the messages above",
    },
    Spec {
        name: "think",
        args: " [TOKENS]",
        description: "Turn thinking mode on for this chat, at most TOKENS of thinking per answer",
    },
    Spec {
        name: "no_think",
        args: "",
        description: "Turn thinking mode off for this chat",
    },
    Spec {
        name: "search",
        args: " QUERY",
        description: "Search every chat",
    },
    Spec {
        name: "export",
        args: "",
        description: "This chat as Markdown",
    },
    Spec {
        name: "quote",
        args: "",
        description: "Stream a built-in Markdown passage (a self-test, no model needed)",
    },
];

fn suggestion(spec: &Spec) -> CommandSuggestion {
    CommandSuggestion {
        name: format!("/{}", spec.name),
        usage: format!("/{}{}", spec.name, spec.args),
        description: spec.description.into(),
    }
}

/// Every command, in palette order.
pub fn all() -> Vec<CommandSuggestion> {
    COMMANDS.iter().map(suggestion).collect()
}

/// Commands whose name starts with `prefix` (with or without its `/`, any case); all of them
/// for an empty prefix or a lone `/`.
pub fn suggest(prefix: &str) -> Vec<CommandSuggestion> {
    let p = prefix.trim_start();
    let p = p.strip_prefix('/').unwrap_or(p).to_lowercase();
    COMMANDS
        .iter()
        .filter(|spec| spec.name.starts_with(&p))
        .map(suggestion)
        .collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The command a mistyped name most likely meant: one it starts, else one within a couple of
/// edits.
pub fn closest(name: &str) -> Option<&'static str> {
    let name = name.to_lowercase();
    if name.is_empty() {
        return None;
    }
    if let Some(spec) = COMMANDS.iter().find(|s| s.name.starts_with(&name)) {
        return Some(spec.name);
    }
    COMMANDS
        .iter()
        .map(|s| (edit_distance(&name, s.name), s.name))
        .filter(|&(d, s)| d <= 2.min(s.len() / 2))
        .min()
        .map(|(_, s)| s)
}

/// Reads the composer's text.
pub fn parse(text: &str) -> Parsed {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("//") {
        return Parsed::Message(format!("/{rest}"));
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Parsed::Message(text.to_owned());
    };
    let (name, args) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], rest[i..].trim()),
        None => (rest, ""),
    };
    let command = match name.to_lowercase().as_str() {
        "help" | "?" => Command::Help,
        "status" => Command::Status,
        "model" => Command::Model,
        "reset" | "clear" => Command::Reset,
        "think" => Command::Think(args.to_owned()),
        "no_think" | "no-think" | "nothink" => Command::NoThink,
        "search" => Command::Search(args.to_owned()),
        "export" => Command::Export,
        "quote" => Command::Quote,
        _ => {
            return Parsed::Unknown {
                name: name.to_owned(),
                closest: closest(name),
            }
        }
    };
    Parsed::Command(command)
}

/// `/help`'s reply.
pub fn help_text() -> String {
    let mut out = String::from("**Commands**\n\n");
    for s in all() {
        out.push_str(&format!("- `{}`: {}\n", s.usage, s.description));
    }
    out.push_str("\nTo send a message that starts with `/`, begin it with `//`.");
    out
}

/// The reply to an unknown command.
pub fn unknown_text(name: &str, closest: Option<&str>) -> String {
    let mut out = format!("Unknown command `/{name}`.");
    if let Some(c) = closest {
        out.push_str(&format!(" Did you mean `/{c}`?"));
    }
    out.push_str(
        " Type `/help` for the list. To send a message that starts with `/`, begin it with `//`.",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_arguments_and_messages() {
        assert_eq!(parse("/help"), Parsed::Command(Command::Help));
        assert_eq!(parse("  /STATUS  "), Parsed::Command(Command::Status));
        assert_eq!(
            parse("/search  NEAR( \"x"),
            Parsed::Command(Command::Search("NEAR( \"x".into()))
        );
        assert_eq!(parse("/no-think"), Parsed::Command(Command::NoThink));
        assert_eq!(parse("hello /help"), Parsed::Message("hello /help".into()));
        assert_eq!(parse("//etc/hosts"), Parsed::Message("/etc/hosts".into()));
    }

    #[test]
    fn unknown_commands_suggest_the_closest() {
        let unknown = |text| match parse(text) {
            Parsed::Unknown { closest, .. } => closest,
            other => panic!("{other:?}"),
        };
        assert_eq!(unknown("/stauts"), Some("status"));
        assert_eq!(unknown("/sea"), Some("search"));
        assert_eq!(unknown("/exprot"), Some("export"));
        assert_eq!(unknown("/xyzzy"), None);
        assert_eq!(unknown("/"), None);
        let text = unknown_text("stauts", Some("status"));
        assert!(
            text.contains("`/status`") && text.contains("/help"),
            "{text}"
        );
    }

    #[test]
    fn the_palette_filters_by_prefix() {
        assert_eq!(suggest("").len(), COMMANDS.len());
        assert_eq!(suggest("/").len(), COMMANDS.len());
        let names: Vec<_> = suggest("/s").into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["/status", "/search"]);
        assert_eq!(suggest("/SEARCH")[0].usage, "/search QUERY");
        assert!(suggest("/zz").is_empty());
        assert!(help_text().contains("/no_think"));
    }
}
