//! Editing a sent message, and the branches it leaves.
//!
//! A chat shows one path: its *active* messages (`branch_id` NULL), in id order. Editing a user
//! message replaces it and everything after it with the new text and a new answer; what was
//! replaced is either kept as a *branch* (a `branches` row naming the last message before it,
//! `after_id`, NULL for the chat's start; its messages carry its id) or deleted. So at any
//! message the alternatives are the active continuation and the branches forked at the same
//! place, ordered by when each began (its first message's id). Switching archives the active
//! continuation as a branch and makes the chosen one active: paths stay in id order, since every
//! message is written after the one before it. Search and export see the active path only.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::app::ChatApp;
use crate::error::{ChatError, Result};
use crate::store::{
    now_ms, title_from, ChatId, Message, MessageId, MessageKind, NewMessage, Role, Store,
};
use crate::views::SendOutcome;

/// Where a message stands among the alternatives at its place: `index` of `count` (from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branches {
    pub index: usize,
    pub count: usize,
}

/// Which alternative to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    Previous,
    Next,
}

/// The active message before `message_id` in its chat (None: it is the first).
fn fork_point(
    conn: &Connection,
    chat_id: ChatId,
    message_id: MessageId,
) -> Result<Option<MessageId>> {
    Ok(conn.query_row(
        "SELECT max(id) FROM messages WHERE chat_id = ?1 AND branch_id IS NULL AND id < ?2",
        params![chat_id, message_id],
        |row| row.get(0),
    )?)
}

/// Moves the active messages from `from` on into a new branch forked before `from`.
fn archive_from(conn: &Connection, chat_id: ChatId, from: MessageId) -> Result<()> {
    let after = fork_point(conn, chat_id, from)?;
    conn.execute(
        "INSERT INTO branches (chat_id, after_id, created_at) VALUES (?1, ?2, ?3)",
        params![chat_id, after, now_ms()],
    )?;
    let branch = conn.last_insert_rowid();
    conn.execute(
        "UPDATE messages SET branch_id = ?3
         WHERE chat_id = ?1 AND branch_id IS NULL AND id >= ?2",
        params![chat_id, from, branch],
    )?;
    Ok(())
}

/// Deletes the active message `from` and every later active message of the chat, then the
/// branches forked at a deleted message (their fork point is gone, so they cannot be reached),
/// with their messages, until none is left.
pub(crate) fn delete_active_from(
    conn: &Connection,
    chat_id: ChatId,
    from: MessageId,
) -> Result<usize> {
    let n = conn.execute(
        "DELETE FROM messages WHERE chat_id = ?1 AND branch_id IS NULL AND id >= ?2",
        params![chat_id, from],
    )?;
    while conn.execute(
        "DELETE FROM branches WHERE chat_id = ?1 AND after_id IS NOT NULL
           AND after_id NOT IN (SELECT id FROM messages WHERE chat_id = ?1)",
        [chat_id],
    )? > 0
    {}
    Ok(n)
}

/// A chat not renamed by the user is titled by the first question of the version it shows.
fn retitle(conn: &Connection, chat_id: ChatId) -> Result<()> {
    let first: Option<String> = conn
        .query_row(
            "SELECT content FROM messages WHERE chat_id = ?1 AND branch_id IS NULL
               AND role = 'user' AND kind = 'chat' ORDER BY id LIMIT 1",
            [chat_id],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(first) = first {
        conn.execute(
            "UPDATE chats SET title = ?2 WHERE id = ?1 AND title_is_custom = 0",
            params![chat_id, title_from(&first)],
        )?;
    }
    Ok(())
}

/// Whether `message_id` is an active message of `chat_id`.
fn is_active(conn: &Connection, chat_id: ChatId, message_id: MessageId) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM messages WHERE id = ?1 AND chat_id = ?2 AND branch_id IS NULL",
            params![message_id, chat_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The kept versions forked after `after` (None: the chat's start), in the order they began:
/// (first message id, branch id).
fn alternatives(
    conn: &Connection,
    chat_id: ChatId,
    after: Option<MessageId>,
) -> Result<Vec<(MessageId, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT min(m.id), b.id FROM branches b JOIN messages m ON m.branch_id = b.id
         WHERE b.chat_id = ?1 AND b.after_id IS ?2 GROUP BY b.id ORDER BY 1",
    )?;
    let rows = stmt.query_map(params![chat_id, after], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Makes the kept version `branch` the one shown (its messages active, the branch row gone).
fn restore(conn: &Connection, branch: i64) -> Result<()> {
    conn.execute(
        "UPDATE messages SET branch_id = NULL WHERE branch_id = ?1",
        [branch],
    )?;
    conn.execute("DELETE FROM branches WHERE id = ?1", [branch])?;
    Ok(())
}

impl Store {
    /// Marks each active message (given in id order) that has alternatives with its place
    /// among them.
    pub(crate) fn mark_branches(&self, chat_id: ChatId, messages: &mut [Message]) -> Result<()> {
        // (fork point, first message id) of every branch of the chat.
        let mut stmt = self.conn().prepare_cached(
            "SELECT b.after_id, min(m.id) FROM branches b JOIN messages m ON m.branch_id = b.id
             WHERE b.chat_id = ?1 GROUP BY b.id",
        )?;
        let forks: Vec<(Option<MessageId>, MessageId)> = stmt
            .query_map([chat_id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut before: Option<MessageId> = None;
        for m in messages.iter_mut() {
            let here: Vec<MessageId> = forks
                .iter()
                .filter(|(after, _)| *after == before)
                .map(|(_, first)| *first)
                .collect();
            if !here.is_empty() {
                m.branches = Some(Branches {
                    index: 1 + here.iter().filter(|first| **first < m.id).count(),
                    count: 1 + here.len(),
                });
            }
            before = Some(m.id);
        }
        Ok(())
    }

    /// Shows the previous or next alternative at `message_id`'s place (an active message with
    /// alternatives); the one shown now is kept as a branch. One transaction.
    pub fn switch_branch(
        &mut self,
        chat_id: ChatId,
        message_id: MessageId,
        to: Switch,
    ) -> Result<()> {
        let tx = self.conn_mut().transaction()?;
        if !is_active(&tx, chat_id, message_id)? {
            return Err(ChatError::NoSuchMessage(message_id));
        }
        // The alternatives here in the order they began: (first message id, branch id), the
        // active continuation with no branch id.
        let after = fork_point(&tx, chat_id, message_id)?;
        let mut all: Vec<(MessageId, Option<i64>)> = alternatives(&tx, chat_id, after)?
            .into_iter()
            .map(|(first, branch)| (first, Some(branch)))
            .collect();
        all.push((message_id, None));
        all.sort();
        let at = all
            .iter()
            .position(|(_, b)| b.is_none())
            .expect("the active continuation is one of them");
        let target = match to {
            Switch::Previous => at.checked_sub(1),
            Switch::Next => Some(at + 1).filter(|i| *i < all.len()),
        };
        let Some((_, Some(branch))) = target.map(|i| all[i]) else {
            return Err(ChatError::Invalid(format!(
                "there is no {} version of this message",
                match to {
                    Switch::Previous => "earlier",
                    Switch::Next => "later",
                }
            )));
        };
        archive_from(&tx, chat_id, message_id)?;
        restore(&tx, branch)?;
        retitle(&tx, chat_id)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes the version shown at `message_id`'s place (an active message with
    /// alternatives): it and every later message of it go, with the versions forked inside
    /// it, and the version before it (the next one when it was the first) is shown instead.
    /// One transaction.
    pub fn delete_version(&mut self, chat_id: ChatId, message_id: MessageId) -> Result<()> {
        let tx = self.conn_mut().transaction()?;
        if !is_active(&tx, chat_id, message_id)? {
            return Err(ChatError::NoSuchMessage(message_id));
        }
        let others = alternatives(&tx, chat_id, fork_point(&tx, chat_id, message_id)?)?;
        let shown = others
            .iter()
            .rev()
            .find(|(first, _)| *first < message_id)
            .or(others.first());
        let Some(&(_, branch)) = shown else {
            return Err(ChatError::Invalid(
                "this message has no other version to show instead: edit it or delete the chat"
                    .into(),
            ));
        };
        delete_active_from(&tx, chat_id, message_id)?;
        restore(&tx, branch)?;
        retitle(&tx, chat_id)?;
        tx.execute(
            "UPDATE chats SET updated_at = ?2 WHERE id = ?1",
            params![chat_id, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces the user message `message_id` and everything after it with `text` as a new
    /// message (returned); what it replaces is kept as a branch (`keep`) or deleted. One
    /// transaction.
    pub fn edit_message(
        &mut self,
        chat_id: ChatId,
        message_id: MessageId,
        text: &str,
        keep: bool,
    ) -> Result<Message> {
        let old = self.message(message_id)?;
        let tx = self.conn_mut().transaction()?;
        if !is_active(&tx, chat_id, message_id)? {
            return Err(ChatError::NoSuchMessage(message_id));
        }
        if old.role != Role::User || old.kind != MessageKind::Chat {
            return Err(ChatError::Invalid(
                "only a message you sent can be edited".into(),
            ));
        }
        match keep {
            true => archive_from(&tx, chat_id, message_id)?,
            false => {
                delete_active_from(&tx, chat_id, message_id)?;
            }
        }
        let now = now_ms();
        tx.execute(
            "INSERT INTO messages (chat_id, role, kind, content, status, created_at)
             VALUES (?1, 'user', 'chat', ?2, 'complete', ?3)",
            params![chat_id, text, now],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "UPDATE chats SET updated_at = ?2 WHERE id = ?1",
            params![chat_id, now],
        )?;
        retitle(&tx, chat_id)?;
        tx.commit()?;
        self.message(id)
    }
}

impl ChatApp {
    /// Edits a message the user sent: it and everything after it are replaced by `text` and a
    /// new answer to it (`Generating`); the replaced part is kept as a branch to switch back to
    /// (`keep_old`) or deleted. Refused while the chat answers (`Busy`).
    pub fn edit(
        &self,
        chat_id: ChatId,
        message_id: MessageId,
        text: &str,
        keep_old: bool,
    ) -> Result<SendOutcome> {
        let crate::commands::Parsed::Message(text) =
            crate::commands::parse(crate::send::checked_text(text)?)
        else {
            return Err(ChatError::Invalid(
                "an edited message cannot be a command: send commands from the composer".into(),
            ));
        };
        self.core().dismiss_follow_ups(chat_id);
        let turn = self.core().begin_answer(chat_id, |store| {
            self.ensure_model_usable()?;
            let user = store.edit_message(chat_id, message_id, &text, keep_old)?;
            let answer =
                store.add_message(NewMessage::answer_placeholder(chat_id, MessageKind::Chat))?;
            Ok((user, answer))
        })?;
        self.queue_answer(chat_id, turn)
    }

    /// Shows the previous or next version of the chat from `message_id` on (a message with
    /// alternatives: [`crate::Message::branches`]). Refused while the chat answers (`Busy`).
    pub fn switch_branch(&self, chat_id: ChatId, message_id: MessageId, to: Switch) -> Result<()> {
        self.core().dismiss_follow_ups(chat_id);
        self.core().while_idle(chat_id, |store| {
            store.switch_branch(chat_id, message_id, to)
        })?;
        self.core().emit(crate::AppEvent::ChatsChanged);
        Ok(())
    }

    /// Deletes the version of the chat shown from `message_id` on (a message with
    /// alternatives); the version before it is shown instead. Refused while the chat answers
    /// (`Busy`).
    pub fn delete_version(&self, chat_id: ChatId, message_id: MessageId) -> Result<()> {
        self.core().dismiss_follow_ups(chat_id);
        self.core()
            .while_idle(chat_id, |store| store.delete_version(chat_id, message_id))?;
        self.core().emit(crate::AppEvent::ChatsChanged);
        Ok(())
    }
}

/// Editing through the real chat app, the model's output scripted at the engine's token boundary.
#[cfg(test)]
mod app_tests {
    use crate::followups::app_tests::harness;
    use crate::followups::FollowUpSettings;
    use crate::{ChatError, MessageStatus, Switch};

    #[test]
    fn an_edit_answers_the_new_text_without_the_old_version_and_export_follows_the_version_shown() {
        let off = FollowUpSettings {
            enabled: false,
            ..FollowUpSettings::default()
        };
        let h = harness(&["Blue.", "Green.", "Red."], off);
        let chat = h.app.create_chat().unwrap();
        h.ask(chat.id, "Name a colour.");
        let asked = h.app.chat(chat.id).unwrap().messages[0].id;

        let new = h
            .app
            .edit(chat.id, asked, "Name a fruit colour.", true)
            .unwrap();
        let crate::SendOutcome::Generating {
            user_message_id, ..
        } = new
        else {
            panic!("{new:?}")
        };
        h.wait_idle(chat.id);
        let view = h.app.chat(chat.id).unwrap();
        let shown: Vec<&str> = view.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(shown, ["Name a fruit colour.", "Green."]);
        assert_eq!(view.messages[0].id, user_message_id);
        assert_eq!(view.messages[1].status, MessageStatus::Complete);
        let b = view.messages[0].branches.expect("two versions");
        assert_eq!((b.index, b.count), (2, 2));
        // The new answer's prompt holds the edited question only.
        let prompts = h.prompts.lock().unwrap().clone();
        assert!(prompts[1].contains("Name a fruit colour."));
        assert!(!prompts[1].contains("Name a colour.") && !prompts[1].contains("Blue."));
        let md = h.app.export(chat.id).unwrap().markdown;
        assert!(md.contains("Green.") && !md.contains("Blue."), "{md}");

        h.app
            .switch_branch(chat.id, user_message_id, Switch::Previous)
            .unwrap();
        let md = h.app.export(chat.id).unwrap().markdown;
        assert!(md.contains("Blue.") && !md.contains("Green."), "{md}");
        // Commands are not edits; a message of another chat is missing here.
        let err = h.app.edit(chat.id, asked, "/help", true).unwrap_err();
        assert!(err.to_string().contains("cannot be a command"), "{err}");
        let other = h.app.create_chat().unwrap();
        assert!(matches!(
            h.app.edit(other.id, asked, "x", true),
            Err(ChatError::NoSuchMessage(_))
        ));
        // Discarding: the old version goes.
        h.app
            .edit(chat.id, asked, "Name a sky colour.", false)
            .unwrap();
        h.wait_idle(chat.id);
        let view = h.app.chat(chat.id).unwrap();
        let shown: Vec<&str> = view.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(shown, ["Name a sky colour.", "Red."]);
        let b = view.messages[0].branches.expect("the other version stays");
        assert_eq!((b.index, b.count), (2, 2), "one kept, one discarded");
    }

    /// How many messages (of any version) search's index finds `word` in.
    fn indexed(h: &crate::followups::app_tests::Harness, word: &str) -> i64 {
        h.app
            .core()
            .store(|store| {
                Ok(store.conn().query_row(
                    "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?1",
                    [word],
                    |row| row.get(0),
                )?)
            })
            .unwrap()
    }

    fn shown(h: &crate::followups::app_tests::Harness, chat: i64) -> Vec<String> {
        let view = h.app.chat(chat).unwrap();
        view.messages.into_iter().map(|m| m.content).collect()
    }

    #[test]
    fn deleting_a_version_shows_the_one_before_and_leaves_no_trace_of_it() {
        let off = FollowUpSettings {
            enabled: false,
            ..FollowUpSettings::default()
        };
        let h = harness(&["Blue.", "Green.", "Yellow.", "Lime.", "Kiwi."], off);
        let chat = h.app.create_chat().unwrap();
        h.ask(chat.id, "Name a colour.");
        let first = h.app.chat(chat.id).unwrap().messages[0].id;
        h.app
            .edit(chat.id, first, "Name a leaf colour.", true)
            .unwrap();
        h.wait_idle(chat.id);
        let second = h.app.chat(chat.id).unwrap().messages[0].id;
        h.app
            .edit(chat.id, second, "Name a sun colour.", true)
            .unwrap();
        h.wait_idle(chat.id);
        // A version forked inside the second one: it goes with it.
        h.app
            .switch_branch(
                chat.id,
                h.app.chat(chat.id).unwrap().messages[0].id,
                Switch::Previous,
            )
            .unwrap();
        assert_eq!(shown(&h, chat.id), ["Name a leaf colour.", "Green."]);
        h.ask(chat.id, "And a lime?");
        let lime = h.app.chat(chat.id).unwrap().messages[2].id;
        h.app.edit(chat.id, lime, "And a kiwi?", true).unwrap();
        h.wait_idle(chat.id);
        let view = h.app.chat(chat.id).unwrap();
        assert_eq!(view.messages.len(), 4);
        let b = view.messages[0].branches.unwrap();
        assert_eq!((b.index, b.count), (2, 3));
        assert_eq!(view.messages[2].branches.unwrap().count, 2);

        h.app.delete_version(chat.id, second).unwrap();
        let view = h.app.chat(chat.id).unwrap();
        assert_eq!(shown(&h, chat.id), ["Name a colour.", "Blue."]);
        let b = view.messages[0].branches.expect("two versions left");
        assert_eq!((b.index, b.count), (1, 2));
        assert_eq!(view.chat.title, "Name a colour.");
        // Gone from the store: search's index, export, the next prompt.
        assert_eq!(indexed(&h, "leaf"), 0);
        assert_eq!(indexed(&h, "lime"), 0);
        assert_eq!(indexed(&h, "kiwi"), 0);
        let kept: i64 = h
            .app
            .core()
            .store(|store| {
                Ok(store.conn().query_row(
                    "SELECT count(*) FROM branches WHERE chat_id = ?1",
                    [chat.id],
                    |row| row.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(
            kept, 1,
            "only the sun version is kept: lime's went with its version"
        );
        assert_eq!(indexed(&h, "sun"), 1, "the other version stays");
        let md = h.app.export(chat.id).unwrap().markdown;
        assert!(!md.contains("leaf") && md.contains("Blue."), "{md}");
        h.app.switch_branch(chat.id, first, Switch::Next).unwrap();
        assert_eq!(shown(&h, chat.id), ["Name a sun colour.", "Yellow."]);

        // The first version deleted: the next one shows; then no other version is left.
        let sun = h.app.chat(chat.id).unwrap().messages[0].id;
        h.app.switch_branch(chat.id, sun, Switch::Previous).unwrap();
        h.app.delete_version(chat.id, first).unwrap();
        assert_eq!(shown(&h, chat.id), ["Name a sun colour.", "Yellow."]);
        assert!(h.app.chat(chat.id).unwrap().messages[0].branches.is_none());
        assert_eq!(indexed(&h, "blue"), 0);
        let err = h.app.delete_version(chat.id, sun).unwrap_err();
        assert!(err.to_string().contains("no other version"), "{err}");
        assert!(matches!(
            h.app.delete_version(chat.id, first),
            Err(ChatError::NoSuchMessage(_))
        ));
    }
}
