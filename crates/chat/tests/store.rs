//! The chat database: schema, round trips, titles, cascades, full-text search, recovery.

use chat::migrations::MIGRATIONS;
use chat::store::{FinishedMessage, NewMessage, NEW_CHAT_TITLE};
use chat::{ChatError, MessageKind, MessageStatus, Role, Store};

fn add(store: &mut Store, chat_id: i64, role: Role, content: &str) -> chat::Message {
    store
        .add_message(NewMessage {
            chat_id,
            role,
            kind: MessageKind::Chat,
            content,
            status: MessageStatus::Complete,
        })
        .unwrap()
}

#[test]
fn migrations_run_once_from_empty_and_reopening_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/chats.sqlite3");
    {
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let chat = store
            .create_chat(true, &serde_json::json!({"k": 1}))
            .unwrap();
        add(&mut store, chat.id, Role::User, "kept across opens");
    }
    for _ in 0..2 {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(store.list_chats().unwrap().len(), 1);
        store.integrity_check().unwrap();
    }
    // WAL is persistent in the file; FTS5 is compiled into the bundled SQLite.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let fts5: i64 = conn
        .query_row("SELECT sqlite_compileoption_used('ENABLE_FTS5')", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(fts5, 1);
}

#[test]
fn a_database_from_a_newer_app_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chats.sqlite3");
    drop(Store::open(&path).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
    }
    let err = Store::open(&path).err().expect("refused");
    assert!(
        matches!(err, ChatError::NewerSchema { found: 999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer version"), "{err}");
}

#[test]
fn chats_and_messages_round_trip() {
    let mut store = Store::open_in_memory().unwrap();
    let chat = store
        .create_chat(false, &serde_json::json!({"temperature": 0.5}))
        .unwrap();
    assert_eq!(chat.title, NEW_CHAT_TITLE);
    assert!(!chat.thinking);
    assert_eq!(chat.settings["temperature"], 0.5);
    let q = add(&mut store, chat.id, Role::User, "What is 2+2?");
    let a = store
        .add_message(NewMessage::answer_placeholder(chat.id, MessageKind::Chat))
        .unwrap();
    store.checkpoint(a.id, "It is", "").unwrap();
    assert_eq!(store.message(a.id).unwrap().content, "It is");
    let stats = chat::MessageStats {
        completion_tokens: 3,
        decode_tok_s: 35.5,
        ..Default::default()
    };
    let done = FinishedMessage {
        content: "It is 4.".into(),
        thinking: "2 and 2".into(),
        thinking_ms: Some(120),
        status: Some(MessageStatus::Complete),
        error: None,
        stats: Some(stats.clone()),
        tools: vec![chat::tools::ToolRecord {
            index: 0,
            name: "calculator".into(),
            arguments: serde_json::json!({"expression": "2+2"}),
            status: chat::tools::ToolStatus::Done,
            result: "4".into(),
            duration_ms: 1,
        }],
    };
    let stored = store.finish_message(a.id, &done, 17).unwrap();
    assert_eq!(stored.tools, done.tools);
    assert_eq!(store.message(a.id).unwrap().tools, done.tools);
    assert_eq!(stored.content, "It is 4.");
    assert_eq!(stored.thinking, "2 and 2");
    assert_eq!(stored.thinking_ms, Some(120));
    assert_eq!(stored.stats, Some(stats));
    // A checkpoint after the end changes nothing.
    store.checkpoint(a.id, "late", "").unwrap();
    let messages = store.messages(chat.id).unwrap();
    assert_eq!(
        messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        [q.id, a.id]
    );
    assert_eq!(messages[1].content, "It is 4.");
    let chat = store.chat(chat.id).unwrap();
    assert_eq!(chat.last_event_id, 17);
    store.set_thinking(chat.id, true).unwrap();
    assert!(store.chat(chat.id).unwrap().thinking);
    assert!(matches!(store.chat(999), Err(ChatError::NoSuchChat(999))));
    assert!(matches!(
        store.message(999),
        Err(ChatError::NoSuchMessage(999))
    ));
}

#[test]
fn the_first_user_message_titles_the_chat_until_it_is_renamed() {
    let mut store = Store::open_in_memory().unwrap();
    let chat = store.create_chat(true, &serde_json::json!({})).unwrap();
    let long = "Explain   the difference between\na mutex and a semaphore, with examples in Rust and C, please";
    add(&mut store, chat.id, Role::User, long);
    let title = store.chat(chat.id).unwrap().title;
    assert!(
        title.starts_with("Explain the difference between a mutex"),
        "{title}"
    );
    assert!(
        title.ends_with('…') && title.chars().count() <= 61,
        "{title}"
    );
    add(&mut store, chat.id, Role::User, "second message");
    assert_eq!(store.chat(chat.id).unwrap().title, title);

    let renamed = store.rename_chat(chat.id, "  Locks  ").unwrap();
    assert_eq!(renamed.title, "Locks");
    assert!(renamed.title_is_custom);
    assert!(store.rename_chat(chat.id, "   ").is_err());
    assert!(matches!(
        store.rename_chat(42, "x"),
        Err(ChatError::NoSuchChat(42))
    ));

    let short = store.create_chat(true, &serde_json::json!({})).unwrap();
    add(&mut store, short.id, Role::User, "  hi  ");
    assert_eq!(store.chat(short.id).unwrap().title, "hi");
}

#[test]
fn deleting_a_chat_deletes_its_messages_and_their_search_entries() {
    let mut store = Store::open_in_memory().unwrap();
    let keep = store.create_chat(true, &serde_json::json!({})).unwrap();
    let gone = store.create_chat(true, &serde_json::json!({})).unwrap();
    add(
        &mut store,
        keep.id,
        Role::User,
        "penguins live in the south",
    );
    let m = add(&mut store, gone.id, Role::User, "penguins cannot fly");
    assert_eq!(store.search("penguins").unwrap().len(), 2);
    store.delete_chat(gone.id).unwrap();
    assert!(matches!(
        store.message(m.id),
        Err(ChatError::NoSuchMessage(_))
    ));
    let hits = store.search("penguins").unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].chat_id, keep.id);
    store.integrity_check().unwrap();
    assert!(matches!(
        store.delete_chat(gone.id),
        Err(ChatError::NoSuchChat(_))
    ));
    assert_eq!(store.list_chats().unwrap().len(), 1);
}

#[test]
fn hostile_search_queries_never_reach_fts5_syntax() {
    let mut store = Store::open_in_memory().unwrap();
    let chat = store.create_chat(true, &serde_json::json!({})).unwrap();
    add(
        &mut store,
        chat.id,
        Role::User,
        "The quick brown fox jumps over the lazy dog",
    );
    add(
        &mut store,
        chat.id,
        Role::Assistant,
        "Café au lait, naïve résumé — 東京 and Ünïcödé",
    );
    add(
        &mut store,
        chat.id,
        Role::User,
        r#"He said "NEAR(" and AND OR NOT - * : ^ column:x"#,
    );
    let hits = |q: &str| store.search(q).map(|h| h.len());
    // Each of these is valid input with matches.
    assert_eq!(hits("quick fox").unwrap(), 1);
    assert_eq!(hits("QUICK").unwrap(), 1);
    assert_eq!(hits("qui*").unwrap(), 1, "a trailing * is a prefix search");
    assert_eq!(hits("cafe").unwrap(), 1, "diacritics are folded");
    assert_eq!(hits("résumé").unwrap(), 1);
    assert_eq!(hits("東京").unwrap(), 1);
    assert_eq!(hits("ünïcödé").unwrap(), 1);
    assert_eq!(hits("NEAR(").unwrap(), 1);
    assert_eq!(hits("\"NEAR(\"").unwrap(), 1);
    assert_eq!(hits("AND").unwrap(), 2, "a plain word, in two messages");
    assert_eq!(hits("NOT").unwrap(), 1);
    assert_eq!(hits("column:x").unwrap(), 1);
    // Syntax that would be an FTS5 error is just words (that may match nothing).
    for q in [
        "\"unbalanced",
        "fox\"",
        "NEAR(fox dog, 2)",
        "fox AND",
        "OR",
        "NOT fox",
        "-fox",
        "fox -dog",
        "{fox}",
        "fox + dog",
        "col:fox",
        "^fox",
        "a\"b\"c",
        "'; DROP TABLE messages; --",
        "\u{0}fox",
        "fox 🦊",
    ] {
        assert!(
            store.search(q).is_ok(),
            "{q:?} failed: {:?}",
            store.search(q)
        );
    }
    // Nothing to search for is a clear message, not an SQL error.
    for q in ["", "   ", "*", "***", "\"\"", "-", "( )", "🦊"] {
        match store.search(q) {
            Err(ChatError::InvalidQuery(why)) => assert!(why.contains("search"), "{why}"),
            other => panic!("{q:?}: {other:?}"),
        }
    }
    store.integrity_check().unwrap();
}

#[test]
fn search_snippets_mark_hits_and_skip_command_traffic() {
    let mut store = Store::open_in_memory().unwrap();
    let chat = store.create_chat(true, &serde_json::json!({})).unwrap();
    add(
        &mut store,
        chat.id,
        Role::User,
        "Tell me about the aurora borealis tonight",
    );
    store
        .add_message(NewMessage {
            chat_id: chat.id,
            role: Role::Assistant,
            kind: MessageKind::Command,
            content: "results for aurora",
            status: MessageStatus::Complete,
        })
        .unwrap();
    let hits = store.search("aurora").unwrap();
    assert_eq!(hits.len(), 1, "command replies are not indexed");
    let hit = &hits[0];
    assert_eq!(hit.role, Role::User);
    assert_eq!(hit.chat_title, "Tell me about the aurora borealis tonight");
    let marked = hit.snippet_marked("[", "]");
    assert!(marked.contains("[aurora]"), "{marked}");
    assert!(hit.snippet.iter().any(|p| p.hit && p.text == "aurora"));
}

#[test]
fn streaming_rows_become_interrupted_on_reopen_with_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chats.sqlite3");
    let id = {
        let mut store = Store::open(&path).unwrap();
        let chat = store.create_chat(true, &serde_json::json!({})).unwrap();
        add(&mut store, chat.id, Role::User, "hello");
        let a = store
            .add_message(NewMessage::answer_placeholder(chat.id, MessageKind::Chat))
            .unwrap();
        store.checkpoint(a.id, "Hello! How", "").unwrap();
        a.id
        // dropped without finishing: as if the app died
    };
    let store = Store::open(&path).unwrap();
    assert_eq!(store.recovered(), 1);
    let m = store.message(id).unwrap();
    assert_eq!(m.status, MessageStatus::Interrupted);
    assert_eq!(m.content, "Hello! How");
    assert_eq!(Store::open(&path).unwrap().recovered(), 0);
}

#[test]
fn the_model_sees_only_the_conversation_after_the_last_reset() {
    let mut store = Store::open_in_memory().unwrap();
    let chat = store.create_chat(true, &serde_json::json!({})).unwrap();
    add(&mut store, chat.id, Role::User, "old question");
    add(&mut store, chat.id, Role::Assistant, "old answer");
    store
        .add_message(NewMessage {
            chat_id: chat.id,
            role: Role::System,
            kind: MessageKind::Reset,
            content: "reset",
            status: MessageStatus::Complete,
        })
        .unwrap();
    let q = add(&mut store, chat.id, Role::User, "new question");
    let failed = store
        .add_message(NewMessage::answer_placeholder(chat.id, MessageKind::Chat))
        .unwrap();
    let done = FinishedMessage {
        content: "partial".into(),
        status: Some(MessageStatus::Failed),
        error: Some("boom".into()),
        ..Default::default()
    };
    store.finish_message(failed.id, &done, 1).unwrap();
    let ctx = store.context(chat.id, None).unwrap();
    assert_eq!(ctx.iter().map(|m| m.id).collect::<Vec<_>>(), [q.id]);
    assert_eq!(
        store.message(failed.id).unwrap().error.as_deref(),
        Some("boom")
    );
}

#[test]
fn search_lists_a_chat_once_with_its_best_match() {
    let mut store = Store::open_in_memory().unwrap();
    let a = store.create_chat(true, &serde_json::json!({})).unwrap();
    let b = store.create_chat(true, &serde_json::json!({})).unwrap();
    add(
        &mut store,
        a.id,
        Role::User,
        "a long question that mentions a walrus once among many other words about the sea and ice",
    );
    let best = add(&mut store, a.id, Role::Assistant, "walrus walrus walrus");
    add(&mut store, b.id, Role::User, "is a walrus a seal?");
    assert_eq!(store.search("walrus").unwrap().len(), 3, "every message");
    let chats = store.search_chats("walrus").unwrap();
    let ids: Vec<_> = chats.iter().map(|h| h.chat_id).collect();
    assert_eq!(ids.len(), 2, "one row per chat: {ids:?}");
    assert!(ids.contains(&a.id) && ids.contains(&b.id), "{ids:?}");
    let hit_a = chats.iter().find(|h| h.chat_id == a.id).unwrap();
    assert_eq!(hit_a.message_id, best.id, "the chat's best match is shown");
    assert!(matches!(
        store.search_chats("***"),
        Err(ChatError::InvalidQuery(_))
    ));
}

#[test]
fn a_database_of_the_previous_version_is_migrated_and_keeps_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chats.sqlite3");
    {
        // What the app before branches (schema 3) wrote.
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(
            "INSERT INTO chats (title, created_at, updated_at) VALUES ('old', 1, 1);
             INSERT INTO messages (chat_id, role, content, status, created_at)
               VALUES (1, 'user', 'old question', 'complete', 1),
                      (1, 'assistant', 'old answer', 'complete', 2);",
        )
        .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    let texts = |s: &Store| -> Vec<String> {
        s.messages(1)
            .unwrap()
            .into_iter()
            .map(|m| m.content)
            .collect()
    };
    assert_eq!(texts(&store), ["old question", "old answer"]);
    assert_eq!(store.context(1, None).unwrap().len(), 2);
    assert_eq!(store.search("old").unwrap().len(), 2);
    // An old message can be edited, and the old version kept.
    store.edit_message(1, 1, "new question", true).unwrap();
    assert_eq!(texts(&store), ["new question"]);
    store.integrity_check().unwrap();
}

fn texts(store: &Store, chat_id: i64) -> Vec<(String, Option<(usize, usize)>)> {
    store
        .messages(chat_id)
        .unwrap()
        .into_iter()
        .map(|m| (m.content, m.branches.map(|b| (b.index, b.count))))
        .collect()
}

fn plain(items: &[&str]) -> Vec<(String, Option<(usize, usize)>)> {
    items.iter().map(|t| (t.to_string(), None)).collect()
}

#[test]
fn an_edit_keeps_the_old_version_as_a_branch_to_switch_back_to() {
    use chat::Switch::{Next, Previous};
    let mut store = Store::open_in_memory().unwrap();
    let chat = store.create_chat(true, &serde_json::json!({})).unwrap();
    add(&mut store, chat.id, Role::User, "q1");
    add(&mut store, chat.id, Role::Assistant, "a1");
    let q2 = add(&mut store, chat.id, Role::User, "q2 zebra");
    add(&mut store, chat.id, Role::Assistant, "a2");

    let q2b = store.edit_message(chat.id, q2.id, "q2b", true).unwrap();
    add(&mut store, chat.id, Role::Assistant, "a2b");
    let shown = texts(&store, chat.id);
    assert_eq!(shown[..2], plain(&["q1", "a1"]));
    assert_eq!(shown[2], ("q2b".into(), Some((2, 2))));
    assert_eq!(shown[3], ("a2b".into(), None));
    // The model, search and the title see the version shown.
    let context: Vec<String> = store
        .context(chat.id, None)
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(context, ["q1", "a1", "q2b", "a2b"]);
    assert!(store.search("zebra").unwrap().is_empty());

    // Back to the first version, and forward again; there is nothing past either end.
    store.switch_branch(chat.id, q2b.id, Previous).unwrap();
    let shown = texts(&store, chat.id);
    assert_eq!(shown[2], ("q2 zebra".into(), Some((1, 2))));
    assert_eq!(shown[3].0, "a2");
    assert_eq!(store.search("zebra").unwrap().len(), 1);
    let err = store.switch_branch(chat.id, q2.id, Previous).unwrap_err();
    assert!(err.to_string().contains("no earlier version"), "{err}");
    store.switch_branch(chat.id, q2.id, Next).unwrap();
    assert_eq!(texts(&store, chat.id)[2], ("q2b".into(), Some((2, 2))));
    // A message of the version not shown cannot be edited or switched from.
    assert!(matches!(
        store.edit_message(chat.id, q2.id, "x", true),
        Err(ChatError::NoSuchMessage(_))
    ));

    // Editing the first message forks from the chat's start; the later fork stays inside the
    // version it belongs to.
    let q1 = store.messages(chat.id).unwrap()[0].clone();
    let q1b = store.edit_message(chat.id, q1.id, "q1b", true).unwrap();
    assert_eq!(texts(&store, chat.id), [("q1b".to_string(), Some((2, 2)))]);
    assert_eq!(
        store.chat(chat.id).unwrap().title,
        "q1b",
        "titled by the version shown"
    );
    store.switch_branch(chat.id, q1b.id, Previous).unwrap();
    assert_eq!(store.chat(chat.id).unwrap().title, "q1");
    let shown = texts(&store, chat.id);
    assert_eq!(shown[0], ("q1".into(), Some((1, 2))));
    assert_eq!(shown[2], ("q2b".into(), Some((2, 2))));
    store.integrity_check().unwrap();
}

#[test]
fn an_edit_that_discards_leaves_no_branch_and_regenerating_drops_the_branches_it_cuts_off() {
    let mut store = Store::open_in_memory().unwrap();
    let chat = store.create_chat(true, &serde_json::json!({})).unwrap();
    add(&mut store, chat.id, Role::User, "q1");
    let a1 = add(&mut store, chat.id, Role::Assistant, "a1");
    let q2 = add(&mut store, chat.id, Role::User, "q2");
    add(&mut store, chat.id, Role::Assistant, "a2");
    let q2b = store.edit_message(chat.id, q2.id, "q2b", false).unwrap();
    assert_eq!(texts(&store, chat.id), plain(&["q1", "a1", "q2b"]));
    assert!(matches!(
        store.message(q2.id),
        Err(ChatError::NoSuchMessage(_))
    ));

    // Keep a version after a1, then replace a1 (regenerate): that version went with it.
    store.edit_message(chat.id, q2b.id, "q2c", true).unwrap();
    assert_eq!(texts(&store, chat.id)[2].1, Some((2, 2)));
    store.delete_messages_from(chat.id, a1.id).unwrap();
    assert_eq!(texts(&store, chat.id), plain(&["q1"]));
    assert!(matches!(
        store.message(q2b.id),
        Err(ChatError::NoSuchMessage(_))
    ));
    // Only chat messages the user sent can be edited.
    let a = add(&mut store, chat.id, Role::Assistant, "a");
    let err = store.edit_message(chat.id, a.id, "x", true).unwrap_err();
    assert!(err.to_string().contains("only a message you sent"), "{err}");
    store.integrity_check().unwrap();
}
