//! [`Store`]: chats and messages in SQLite (WAL, `synchronous=FULL`, foreign keys on).
//!
//! Every write is one transaction, so a crash (even `kill -9`) keeps each committed message.
//! Writes made through [`Store::unsynced`] are committed without waiting for the disk (the WAL
//! holds them, so a crash of the app keeps them; a power cut may not until [`Store::sync`]):
//! the several writes that begin an answer wait for one flush instead of one each.
//! An answer being generated is a row with status `streaming`, checkpointed as it grows; a row
//! still `streaming` when the store opens belonged to a process that died and becomes
//! `interrupted`, with the text of its last checkpoint.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::branches::Branches;
use crate::error::{ChatError, Result};
use crate::migrations;
use crate::stats::MessageStats;
use crate::tools::ToolRecord;

pub type ChatId = i64;
pub type MessageId = i64;

/// Title of a chat before its first message.
pub const NEW_CHAT_TITLE: &str = "New chat";
/// Titles taken from the first message are cut to about this many characters.
pub const TITLE_CHARS: usize = 60;
/// Longest title a rename accepts.
pub const MAX_TITLE_CHARS: usize = 200;

/// Milliseconds since the Unix epoch (the store's timestamps).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

text_enum!(
    /// Who wrote a message.
    Role { System = "system", User = "user", Assistant = "assistant" }
);
text_enum!(
    /// What a message is for. Only `Chat` messages reach the model and the search index.
    MessageKind { Chat = "chat", Command = "command", Reset = "reset" }
);
text_enum!(
    /// Where a message stands. `Streaming` only while its answer is being produced.
    MessageStatus {
        Streaming = "streaming",
        Complete = "complete",
        Interrupted = "interrupted",
        Failed = "failed",
    }
);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chat {
    pub id: ChatId,
    pub title: String,
    /// The user renamed the chat (the first message no longer sets the title).
    pub title_is_custom: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// Thinking mode for this chat (`/think`, `/no_think`).
    pub thinking: bool,
    /// Most thinking tokens per answer in this chat (`/think N`); `None`: the settings' budget.
    pub thinking_budget: Option<usize>,
    /// The generation settings of the chat's latest answer (JSON), for reference.
    pub settings: serde_json::Value,
    /// Highest stream event id of a stored message (see [`crate::protocol`]).
    pub last_event_id: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub chat_id: ChatId,
    pub role: Role,
    pub kind: MessageKind,
    pub content: String,
    pub thinking: String,
    /// How long the model thought, when it did.
    pub thinking_ms: Option<i64>,
    pub status: MessageStatus,
    /// Why the message failed (status `failed`).
    pub error: Option<String>,
    pub stats: Option<MessageStats>,
    /// The answer's tool calls, in order.
    pub tools: Vec<ToolRecord>,
    pub created_at: i64,
    /// Where it stands among the versions of the chat from here on (after an edit), if there
    /// are others: see [`crate::branches`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches: Option<Branches>,
    /// An answer in progress that waits for the engine behind others: how many go first (its
    /// latest [`crate::EventKind::Queued`]). Never stored: a view's annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<usize>,
}

/// A message to add.
#[derive(Clone, Debug)]
pub struct NewMessage<'a> {
    pub chat_id: ChatId,
    pub role: Role,
    pub kind: MessageKind,
    pub content: &'a str,
    pub status: MessageStatus,
}

impl NewMessage<'static> {
    /// The empty assistant message an answer (or a streamed command reply) is written into.
    pub fn answer_placeholder(chat_id: ChatId, kind: MessageKind) -> Self {
        NewMessage {
            chat_id,
            role: Role::Assistant,
            kind,
            content: "",
            status: MessageStatus::Streaming,
        }
    }
}

/// The final state of a streamed message.
#[derive(Clone, Debug, Default)]
pub struct FinishedMessage {
    pub content: String,
    pub thinking: String,
    pub thinking_ms: Option<i64>,
    pub status: Option<MessageStatus>,
    pub error: Option<String>,
    pub stats: Option<MessageStats>,
    pub tools: Vec<ToolRecord>,
}

/// The chat database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    recovered: usize,
    /// Whether the database is in WAL mode (a file database always should be).
    wal: bool,
}

/// A flush of the WAL that the caller runs outside the store's lock ([`Store::pending_sync`]).
#[must_use = "the commits are not on disk until it is waited for"]
pub struct PendingSync(PathBuf);

impl PendingSync {
    /// Flushes the WAL file to disk (as SQLite's `synchronous=FULL` does at each commit).
    pub fn wait(self) -> Result<()> {
        let io = |error| ChatError::Io {
            action: "flush to disk",
            path: self.0.clone(),
            error,
        };
        std::fs::File::open(&self.0)
            .and_then(|f| f.sync_data())
            .map_err(io)
    }
}

fn conversion_error(column: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        what.to_owned().into(),
    )
}

fn chat_from_row(row: &Row<'_>) -> rusqlite::Result<Chat> {
    let settings: String = row.get(6)?;
    Ok(Chat {
        id: row.get(0)?,
        title: row.get(1)?,
        title_is_custom: row.get(2)?,
        created_at: row.get(3)?,
        updated_at: row.get(4)?,
        thinking: row.get(5)?,
        settings: serde_json::from_str(&settings).unwrap_or(serde_json::Value::Null),
        last_event_id: row.get::<_, i64>(7)?.max(0) as u64,
        thinking_budget: row.get::<_, Option<i64>>(8)?.map(|n| n.max(0) as usize),
    })
}

const CHAT_COLUMNS: &str =
    "id, title, title_is_custom, created_at, updated_at, thinking, settings, last_event_id, thinking_budget";
const MESSAGE_COLUMNS: &str =
    "id, chat_id, role, kind, content, thinking, thinking_ms, status, error, stats, created_at, tools";

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    let text = |i: usize| -> rusqlite::Result<String> { row.get(i) };
    let role = Role::parse(&text(2)?).ok_or_else(|| conversion_error(2, "unknown role"))?;
    let kind = MessageKind::parse(&text(3)?).ok_or_else(|| conversion_error(3, "unknown kind"))?;
    let status =
        MessageStatus::parse(&text(7)?).ok_or_else(|| conversion_error(7, "unknown status"))?;
    let stats: Option<String> = row.get(9)?;
    Ok(Message {
        id: row.get(0)?,
        chat_id: row.get(1)?,
        role,
        kind,
        content: row.get(4)?,
        thinking: row.get(5)?,
        thinking_ms: row.get(6)?,
        status,
        error: row.get(8)?,
        // Stats are informative: an unreadable blob is dropped, not an error.
        stats: stats.and_then(|s| serde_json::from_str(&s).ok()),
        created_at: row.get(10)?,
        // Written only by this code from `ToolRecord`s: a row that does not read is corrupt.
        tools: serde_json::from_str(&text(11)?)
            .map_err(|_| conversion_error(11, "unreadable tool calls"))?,
        branches: None,
        waiting: None,
    })
}

/// A chat title from its first message: one line, about [`TITLE_CHARS`] characters, cut at a
/// word boundary where there is one.
pub fn title_from(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let line = words.join(" ");
    if line.is_empty() {
        return NEW_CHAT_TITLE.to_owned();
    }
    if line.chars().count() <= TITLE_CHARS {
        return line;
    }
    let cut: String = line.chars().take(TITLE_CHARS).collect();
    let cut = match cut.rfind(' ') {
        Some(space) if space >= TITLE_CHARS / 2 => cut[..space].to_owned(),
        _ => cut,
    };
    format!(
        "{}…",
        cut.trim_end_matches(|c: char| c.is_whitespace() || c.is_ascii_punctuation())
    )
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| ChatError::Io {
                action: "create the folder",
                path: dir.to_owned(),
                error,
            })?;
        }
        let open_err = |error| ChatError::OpenStore {
            path: path.to_owned(),
            error,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        Self::setup(conn, path.to_owned())
    }

    /// A private in-memory database (tests, previews).
    pub fn open_in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory()?, PathBuf::from(":memory:"))
    }

    fn setup(mut conn: Connection, path: PathBuf) -> Result<Self> {
        let open_err = |error| ChatError::OpenStore {
            path: path.clone(),
            error,
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        // journal_mode answers with the mode in force ("memory" for in-memory databases).
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        let wal = mode == "wal";
        if !wal && path.as_os_str() != ":memory:" {
            tracing::warn!(%mode, "the chat database could not switch to WAL");
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        migrations::migrate(&mut conn, &path)?;
        let recovered = conn.execute(
            "UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'",
            [],
        )?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "answers cut off by an earlier crash are kept as interrupted"
            );
        }
        Ok(Store {
            conn,
            path,
            recovered,
            wal,
        })
    }

    /// Runs `write` with commits that do not wait for the disk (`synchronous=NORMAL`): in WAL
    /// mode each is complete in the WAL, so a crash of the app keeps it and only a power cut
    /// before the next [`Store::sync`] (or synced commit) can lose it. The writes that begin an
    /// answer use it, then one [`Store::sync`] puts them all on disk.
    /// Outside WAL mode the commits stay synchronous.
    pub fn unsynced<T>(&mut self, write: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        if !self.wal {
            return write(self);
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let out = write(self);
        // Every other write keeps waiting for the disk, whatever `write` returned.
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        out
    }

    /// Waits until every commit so far is on disk: flushes the WAL, which holds them (see
    /// [`Store::unsynced`]). A database outside WAL mode has nothing waiting.
    pub fn sync(&self) -> Result<()> {
        match self.pending_sync() {
            Some(pending) => pending.wait(),
            None => Ok(()),
        }
    }

    /// What [`Store::sync`] does, to run without holding the store (the flush needs no
    /// connection: it flushes the WAL file the connection wrote).
    pub fn pending_sync(&self) -> Option<PendingSync> {
        self.wal.then(|| {
            let mut wal = self.path.clone().into_os_string();
            wal.push("-wal");
            PendingSync(PathBuf::from(wal))
        })
    }

    /// The connection's `synchronous` level (2 = FULL, 1 = NORMAL).
    #[cfg(test)]
    fn synchronous(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))?)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many `streaming` rows this open turned into `interrupted`.
    pub fn recovered(&self) -> usize {
        self.recovered
    }

    /// The schema version (`user_version`).
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    /// `PRAGMA integrity_check` plus the full-text index's own check; `Ok` when both pass.
    pub fn integrity_check(&self) -> Result<()> {
        let mut problems = Vec::new();
        self.conn.pragma_query(None, "integrity_check", |row| {
            let line: String = row.get(0)?;
            if line != "ok" {
                problems.push(line);
            }
            Ok(())
        })?;
        if let Err(e) = self.conn.execute(
            "INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')",
            [],
        ) {
            problems.push(format!("full-text index: {e}"));
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(ChatError::Invalid(format!(
                "the chat database is damaged: {}",
                problems.join("; ")
            ))),
        }
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn create_chat(&self, thinking: bool, settings: &serde_json::Value) -> Result<Chat> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO chats (title, created_at, updated_at, thinking, settings)
             VALUES (?1, ?2, ?2, ?3, ?4)",
            params![NEW_CHAT_TITLE, now, thinking, settings.to_string()],
        )?;
        self.chat(self.conn.last_insert_rowid())
    }

    pub fn chat(&self, id: ChatId) -> Result<Chat> {
        self.conn
            .query_row(
                &format!("SELECT {CHAT_COLUMNS} FROM chats WHERE id = ?1"),
                [id],
                chat_from_row,
            )
            .optional()?
            .ok_or(ChatError::NoSuchChat(id))
    }

    /// All chats, most recently active first.
    pub fn list_chats(&self) -> Result<Vec<Chat>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {CHAT_COLUMNS} FROM chats ORDER BY updated_at DESC, id DESC"
        ))?;
        let rows = stmt.query_map([], chat_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn rename_chat(&self, id: ChatId, title: &str) -> Result<Chat> {
        let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
        if title.is_empty() {
            return Err(ChatError::Invalid("a chat title cannot be empty".into()));
        }
        if title.chars().count() > MAX_TITLE_CHARS {
            return Err(ChatError::Invalid(format!(
                "a chat title can have at most {MAX_TITLE_CHARS} characters"
            )));
        }
        let n = self.conn.execute(
            "UPDATE chats SET title = ?2, title_is_custom = 1 WHERE id = ?1",
            params![id, title],
        )?;
        match n {
            0 => Err(ChatError::NoSuchChat(id)),
            _ => self.chat(id),
        }
    }

    /// Deletes a chat and (by cascade) its messages.
    pub fn delete_chat(&self, id: ChatId) -> Result<()> {
        match self.conn.execute("DELETE FROM chats WHERE id = ?1", [id])? {
            0 => Err(ChatError::NoSuchChat(id)),
            _ => Ok(()),
        }
    }

    pub fn set_thinking(&self, id: ChatId, on: bool) -> Result<()> {
        match self.conn.execute(
            "UPDATE chats SET thinking = ?2 WHERE id = ?1",
            params![id, on],
        )? {
            0 => Err(ChatError::NoSuchChat(id)),
            _ => Ok(()),
        }
    }

    /// The chat's own thinking budget; `None` goes back to the settings' one.
    pub fn set_thinking_budget(&self, id: ChatId, budget: Option<usize>) -> Result<()> {
        match self.conn.execute(
            "UPDATE chats SET thinking_budget = ?2 WHERE id = ?1",
            params![id, budget.map(|n| n as i64)],
        )? {
            0 => Err(ChatError::NoSuchChat(id)),
            _ => Ok(()),
        }
    }

    pub fn set_chat_settings(&self, id: ChatId, settings: &serde_json::Value) -> Result<()> {
        match self.conn.execute(
            "UPDATE chats SET settings = ?2 WHERE id = ?1",
            params![id, settings.to_string()],
        )? {
            0 => Err(ChatError::NoSuchChat(id)),
            _ => Ok(()),
        }
    }

    /// Adds a message. The first user message of the conversation titles a chat that was not
    /// renamed.
    pub fn add_message(&mut self, new: NewMessage<'_>) -> Result<Message> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        let chat: Option<(bool, i64)> = tx
            .query_row(
                "SELECT title_is_custom,
                        (SELECT count(*) FROM messages WHERE chat_id = ?1
                           AND role = 'user' AND kind = 'chat')
                 FROM chats WHERE id = ?1",
                [new.chat_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((custom_title, user_messages)) = chat else {
            return Err(ChatError::NoSuchChat(new.chat_id));
        };
        tx.execute(
            "INSERT INTO messages (chat_id, role, kind, content, status, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                new.chat_id,
                new.role.as_str(),
                new.kind.as_str(),
                new.content,
                new.status.as_str(),
                now
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "UPDATE chats SET updated_at = ?2 WHERE id = ?1",
            params![new.chat_id, now],
        )?;
        let first_words =
            new.role == Role::User && new.kind == MessageKind::Chat && user_messages == 0;
        if first_words && !custom_title {
            tx.execute(
                "UPDATE chats SET title = ?2 WHERE id = ?1",
                params![new.chat_id, title_from(new.content)],
            )?;
        }
        tx.commit()?;
        self.message(id)
    }

    pub fn message(&self, id: MessageId) -> Result<Message> {
        self.conn
            .query_row(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1"),
                [id],
                message_from_row,
            )
            .optional()?
            .ok_or(ChatError::NoSuchMessage(id))
    }

    /// A chat's messages in order: the version it shows (see [`crate::branches`]), each with
    /// its place among the versions where there are several.
    pub fn messages(&self, chat_id: ChatId) -> Result<Vec<Message>> {
        self.chat(chat_id)?;
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND branch_id IS NULL
             ORDER BY id"
        ))?;
        let rows = stmt.query_map([chat_id], message_from_row)?;
        let mut messages: Vec<Message> = rows.collect::<rusqlite::Result<_>>()?;
        self.mark_branches(chat_id, &mut messages)?;
        Ok(messages)
    }

    /// What the model sees of a chat before `before` (or all of it): the conversation after
    /// the last context reset, without failed or empty answers and without command traffic.
    pub fn context(&self, chat_id: ChatId, before: Option<MessageId>) -> Result<Vec<Message>> {
        let before = before.unwrap_or(MessageId::MAX);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE chat_id = ?1 AND id < ?2 AND kind = 'chat' AND branch_id IS NULL
               AND status IN ('complete', 'interrupted')
               AND (role != 'assistant' OR content != '')
               AND id > (SELECT coalesce(max(id), 0) FROM messages
                         WHERE chat_id = ?1 AND id < ?2 AND kind = 'reset'
                           AND branch_id IS NULL)
             ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![chat_id, before], message_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Saves the text so far of a `streaming` message, so a crash loses little.
    pub fn checkpoint(&self, id: MessageId, content: &str, thinking: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE messages SET content = ?2, thinking = ?3
             WHERE id = ?1 AND status = 'streaming'",
            params![id, content, thinking],
        )?;
        Ok(())
    }

    /// Stores the final state of a streamed message and the chat's stream position.
    pub fn finish_message(
        &mut self,
        id: MessageId,
        done: &FinishedMessage,
        last_event_id: u64,
    ) -> Result<Message> {
        let now = now_ms();
        let stats = done
            .stats
            .as_ref()
            .map(|s| serde_json::to_string(s).unwrap_or_default());
        let status = done.status.unwrap_or(MessageStatus::Complete);
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE messages SET content = ?2, thinking = ?3, thinking_ms = ?4, status = ?5,
                                 error = ?6, stats = ?7, tools = ?8
             WHERE id = ?1",
            params![
                id,
                done.content,
                done.thinking,
                done.thinking_ms,
                status.as_str(),
                done.error,
                stats,
                serde_json::to_string(&done.tools)
                    .map_err(|e| ChatError::Invalid(e.to_string()))?
            ],
        )?;
        if n == 0 {
            return Err(ChatError::NoSuchMessage(id));
        }
        tx.execute(
            "UPDATE chats SET updated_at = ?2, last_event_id = max(last_event_id, ?3)
             WHERE id = (SELECT chat_id FROM messages WHERE id = ?1)",
            params![id, now, last_event_id as i64],
        )?;
        tx.commit()?;
        self.message(id)
    }

    /// Deletes message `from` and every later message of the chat's version shown
    /// (regenerating an answer replaces it and what followed it), and the versions that
    /// branched off what it deleted. One transaction.
    pub fn delete_messages_from(&mut self, chat_id: ChatId, from: MessageId) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let n = crate::branches::delete_active_from(&tx, chat_id, from)?;
        tx.commit()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(chat_id: ChatId) -> NewMessage<'static> {
        NewMessage {
            chat_id,
            role: Role::User,
            kind: MessageKind::Chat,
            content: "the question",
            status: MessageStatus::Complete,
        }
    }

    /// The answer's writes skip the disk wait; every other write still waits for it, also
    /// after an unsynced write that failed.
    #[test]
    fn unsynced_writes_are_committed_and_full_sync_comes_back_even_after_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chats.sqlite3");
        let mut store = Store::open(&path).unwrap();
        let chat = store.create_chat(false, &serde_json::json!({})).unwrap();
        assert_eq!(store.synchronous().unwrap(), 2);
        let id = store
            .unsynced(|s| {
                assert_eq!(s.synchronous()?, 1);
                Ok(s.add_message(question(chat.id))?.id)
            })
            .unwrap();
        assert_eq!(store.synchronous().unwrap(), 2);
        let failed = store.unsynced(|s| {
            s.add_message(question(chat.id))?;
            Err::<(), _>(ChatError::Invalid("stop here".into()))
        });
        assert!(matches!(failed, Err(ChatError::Invalid(_))));
        assert_eq!(store.synchronous().unwrap(), 2);
        store.sync().unwrap();
        // Committed: another connection reads it.
        let other = Store::open(&path).unwrap();
        assert_eq!(other.message(id).unwrap().content, "the question");
        assert_eq!(other.messages(chat.id).unwrap().len(), 2);
    }

    /// A flush that cannot happen is an error naming the file, not a silent success.
    #[test]
    fn a_sync_that_cannot_flush_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chats.sqlite3");
        let store = Store::open(&path).unwrap();
        let pending = store
            .pending_sync()
            .expect("a file database is in WAL mode");
        let wal = pending.0.clone();
        drop(store); // the last connection removes its WAL
        let err = pending.wait().unwrap_err();
        assert!(
            matches!(&err, ChatError::Io { path, .. } if *path == wal),
            "{err}"
        );
    }

    #[test]
    fn an_in_memory_store_has_nothing_to_sync() {
        let mut store = Store::open_in_memory().unwrap();
        assert!(store.pending_sync().is_none());
        store.unsynced(|s| s.sync()).unwrap();
        assert_eq!(store.synchronous().unwrap(), 2);
    }
}
