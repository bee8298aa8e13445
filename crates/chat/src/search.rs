//! Full-text search over every chat (SQLite FTS5).
//!
//! The user's text is never handed to FTS5's query language: each whitespace-separated word
//! becomes a quoted string (`"word"`, quotes doubled), so `NEAR(`, `AND`, `-`, `:` and
//! unbalanced quotes are plain words. A word ending in `*` stays a prefix search. Words with no
//! letter or digit are dropped (the tokenizer would find nothing in them); a query left empty
//! is refused with a message saying so. Control characters are dropped (FTS5 reads the query
//! as a C string, so a NUL would cut it). All words must occur (FTS5's implicit AND).

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::error::{ChatError, Result};
use crate::store::{ChatId, MessageId, Role, Store};

/// Most hits one search returns.
pub const MAX_HITS: usize = 50;
/// Words beyond this many are ignored (FTS5 cost grows with each).
const MAX_TERMS: usize = 16;
// Private-use characters mark the hits inside snippets; they are split out before returning.
const HIT_START: char = '\u{E000}';
const HIT_END: char = '\u{E001}';

/// A piece of a snippet; `hit` pieces matched the query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnippetPart {
    pub text: String,
    pub hit: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub chat_id: ChatId,
    pub chat_title: String,
    pub message_id: MessageId,
    pub role: Role,
    pub created_at: i64,
    /// A few words around the matches; plain text, never markup.
    pub snippet: Vec<SnippetPart>,
}

impl SearchHit {
    /// The snippet with hits wrapped in `open` / `close` (e.g. `**` for Markdown). The text is
    /// not escaped: escape it first if the target is markup.
    pub fn snippet_marked(&self, open: &str, close: &str) -> String {
        self.snippet
            .iter()
            .map(|p| match p.hit {
                true => format!("{open}{}{close}", p.text),
                false => p.text.clone(),
            })
            .collect()
    }
}

/// Turns any user text into a safe FTS5 query, or says why there is nothing to search for.
pub fn fts_query(input: &str) -> Result<String> {
    let terms: Vec<String> = input
        .split_whitespace()
        .filter_map(|word| {
            // FTS5 reads its query as a C string: a NUL would end it inside our quotes.
            let word: String = word.chars().filter(|c| !c.is_control()).collect();
            let prefix = word.len() > 1 && word.ends_with('*');
            let word = word.trim_end_matches('*');
            if !word.chars().any(char::is_alphanumeric) {
                return None;
            }
            let star = if prefix { "*" } else { "" };
            Some(format!("\"{}\"{star}", word.replace('"', "\"\"")))
        })
        .take(MAX_TERMS)
        .collect();
    if terms.is_empty() {
        let why = match input.trim().is_empty() {
            true => "Type something to search for.",
            false => "Nothing to search for: type a word with letters or digits (punctuation and symbols alone match nothing).",
        };
        return Err(ChatError::InvalidQuery(why.into()));
    }
    Ok(terms.join(" "))
}

fn split_snippet(marked: &str) -> Vec<SnippetPart> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut hit = false;
    for c in marked.chars() {
        let boundary = match c {
            HIT_START => Some(true),
            HIT_END => Some(false),
            _ => None,
        };
        match boundary {
            Some(next) => {
                if !text.is_empty() {
                    parts.push(SnippetPart {
                        text: std::mem::take(&mut text),
                        hit,
                    });
                }
                hit = next;
            }
            None => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(SnippetPart { text, hit });
    }
    parts
}

impl Store {
    /// Messages of every chat matching `query`, best first (FTS5's bm25 rank).
    pub fn search(&self, query: &str) -> Result<Vec<SearchHit>> {
        self.hits(&fts_query(query)?, None)
    }

    /// One hit per chat, its best-matching message, best chats first: the sidebar lists
    /// chats, and a chat listed once per message repeated its element ids.
    pub fn search_chats(&self, query: &str) -> Result<Vec<SearchHit>> {
        let fts = fts_query(query)?;
        // Ranks first, then snippets of the chosen messages: SQLite refuses `snippet()` under a
        // window function or in a subquery, and a snippet per match would be wasted work.
        let mut stmt = self.conn().prepare_cached(
            "SELECT m.id, m.chat_id FROM messages_fts
             JOIN messages m ON m.id = messages_fts.rowid
             WHERE messages_fts MATCH ?1 AND m.branch_id IS NULL
             ORDER BY rank",
        )?;
        let mut rows = stmt.query(params![fts])?;
        let mut chats = std::collections::HashSet::new();
        let mut best: Vec<MessageId> = Vec::new();
        while let Some(row) = rows.next()? {
            if chats.insert(row.get::<_, ChatId>(1)?) {
                best.push(row.get(0)?);
                if best.len() == MAX_HITS {
                    break;
                }
            }
        }
        self.hits(&fts, Some(&best))
    }

    /// The matches of `fts` (only the messages `only`, when given), best first.
    fn hits(&self, fts: &str, only: Option<&[MessageId]>) -> Result<Vec<SearchHit>> {
        let only = only.map(|ids| serde_json::to_string(ids).expect("ids serialize"));
        let mut stmt = self.conn().prepare_cached(
            "SELECT m.id, m.chat_id, c.title, m.role, m.created_at,
                    snippet(messages_fts, 0, ?2, ?3, '…', 16)
             FROM messages_fts
             JOIN messages m ON m.id = messages_fts.rowid
             JOIN chats c ON c.id = m.chat_id
             WHERE messages_fts MATCH ?1 AND m.branch_id IS NULL
               AND (?5 IS NULL OR m.id IN (SELECT value FROM json_each(?5)))
             ORDER BY rank
             LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                fts,
                HIT_START.to_string(),
                HIT_END.to_string(),
                MAX_HITS as i64,
                only
            ],
            |row| {
                let role: String = row.get(3)?;
                let snippet: String = row.get(5)?;
                Ok(SearchHit {
                    message_id: row.get(0)?,
                    chat_id: row.get(1)?,
                    chat_title: row.get(2)?,
                    role: match role.as_str() {
                        "user" => Role::User,
                        "system" => Role::System,
                        _ => Role::Assistant,
                    },
                    created_at: row.get(4)?,
                    snippet: split_snippet(&snippet),
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_become_quoted_strings() {
        assert_eq!(fts_query("hello world").unwrap(), r#""hello" "world""#);
        assert_eq!(fts_query(r#"say "hi"#).unwrap(), r#""say" """hi""#);
        assert_eq!(fts_query("NEAR(a b)").unwrap(), r#""NEAR(a" "b)""#);
        assert_eq!(fts_query("rust*").unwrap(), r#""rust"*"#);
        assert_eq!(fts_query("-x AND y").unwrap(), r#""-x" "AND" "y""#);
        assert_eq!(fts_query("a\u{0}b").unwrap(), r#""ab""#);
    }

    #[test]
    fn nothing_to_search_for_is_a_clear_error() {
        for q in ["", "   ", "***", "\"", "- ( ) :", "*"] {
            let err = fts_query(q).unwrap_err().to_string();
            assert!(err.contains("search"), "{q:?}: {err}");
        }
    }

    #[test]
    fn snippets_split_at_markers() {
        let parts = split_snippet("a \u{E000}cat\u{E001} sat");
        assert_eq!(
            parts,
            vec![
                SnippetPart {
                    text: "a ".into(),
                    hit: false
                },
                SnippetPart {
                    text: "cat".into(),
                    hit: true
                },
                SnippetPart {
                    text: " sat".into(),
                    hit: false
                },
            ]
        );
    }
}
