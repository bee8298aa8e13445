//! The store's schema as numbered migrations, applied in order and counted in `user_version`.
//!
//! Append only: a released migration never changes, a new one goes at the end. `user_version`
//! holds how many have been applied, so reopening an up-to-date database runs none.

use rusqlite::Connection;

use crate::error::{ChatError, Result};

/// Migration `i` (0-based) moves the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: chats, messages and the full-text index over what was said.
    r#"
    -- AUTOINCREMENT: ids of deleted chats and messages are never reused, so an id a UI still
    -- holds (or an event in flight) can never point at a different row.
    CREATE TABLE chats (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        title           TEXT    NOT NULL,
        -- 1 once the user renamed the chat: the first message no longer sets the title.
        title_is_custom INTEGER NOT NULL DEFAULT 0,
        created_at      INTEGER NOT NULL,              -- unix ms
        updated_at      INTEGER NOT NULL,              -- unix ms
        thinking        INTEGER NOT NULL DEFAULT 1,    -- thinking mode for this chat
        settings        TEXT    NOT NULL DEFAULT '{}', -- JSON snapshot of the generation settings
        last_event_id   INTEGER NOT NULL DEFAULT 0     -- stream ids stay monotonic across restarts
    );
    CREATE TABLE messages (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_id     INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
        role        TEXT    NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        -- chat: the conversation the model sees; command: slash commands and their replies;
        -- reset: a context-reset marker (the model sees only what follows the last one).
        kind        TEXT    NOT NULL DEFAULT 'chat' CHECK (kind IN ('chat', 'command', 'reset')),
        content     TEXT    NOT NULL DEFAULT '',
        thinking    TEXT    NOT NULL DEFAULT '',
        thinking_ms INTEGER,
        status      TEXT    NOT NULL
                    CHECK (status IN ('streaming', 'complete', 'interrupted', 'failed')),
        error       TEXT,
        stats       TEXT,                              -- JSON: usage and timings
        created_at  INTEGER NOT NULL                   -- unix ms
    );
    CREATE INDEX messages_by_chat ON messages(chat_id, id);
    CREATE INDEX messages_streaming ON messages(status) WHERE status = 'streaming';

    -- Full-text search over the conversation (not over command replies), kept in step with
    -- `messages` by triggers; `kind` never changes after insert, so the WHEN clauses agree.
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, content = 'messages', content_rowid = 'id',
        tokenize = 'unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.kind = 'chat' BEGIN
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages WHEN old.kind = 'chat' BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages
    WHEN old.kind = 'chat' BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    END;
    "#,
    // 2: an answer's tool calls, a JSON array of `tools::ToolRecord` (the cards it shows).
    r#"
    ALTER TABLE messages ADD COLUMN tools TEXT NOT NULL DEFAULT '[]';
    "#,
    // 3: a chat's own thinking budget (NULL: the settings' `max_thinking_tokens`).
    r#"
    ALTER TABLE chats ADD COLUMN thinking_budget INTEGER;
    "#,
    // 4: versions of a chat after an edit (see `branches.rs`). A branch holds what an edit or a
    // switch replaced, forked after message `after_id` (NULL: from the chat's start); its
    // messages carry its id, the version shown has NULL.
    r#"
    CREATE TABLE branches (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_id    INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
        after_id   INTEGER,
        created_at INTEGER NOT NULL                    -- unix ms
    );
    CREATE INDEX branches_by_chat ON branches(chat_id, after_id);
    ALTER TABLE messages ADD COLUMN branch_id INTEGER REFERENCES branches(id) ON DELETE CASCADE;
    CREATE INDEX messages_by_branch ON messages(branch_id) WHERE branch_id IS NOT NULL;
    "#,
];

/// Brings the schema up to date; returns how many migrations ran.
pub fn migrate(conn: &mut Connection, path: &std::path::Path) -> Result<usize> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > known {
        return Err(ChatError::NewerSchema {
            path: path.to_owned(),
            found,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        // Each migration and its version bump commit together: a crash leaves either.
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "chat database migrated");
    }
    Ok((known - found) as usize)
}
