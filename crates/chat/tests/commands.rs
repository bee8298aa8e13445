//! Every slash command through the facade, with no model loaded; and the no-model state.

mod common;

use chat::store::NewMessage;
use chat::{
    ChatError, CommandAction, MessageKind, MessageStatus, ModelState, Role, SendOutcome, Store,
};
use common::{open, run};

#[test]
fn without_a_model_the_app_explains_how_to_get_one_and_commands_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _rec) = open(dir.path(), None);
    let ModelState::NoModel {
        why,
        how_to_get_one,
    } = app.model_state()
    else {
        panic!("{:?}", app.model_state())
    };
    let models_dir = dir.path().join("models").display().to_string();
    assert!(why.contains(&models_dir), "{why}");
    assert!(
        how_to_get_one.contains("GGUF") && how_to_get_one.contains("Settings"),
        "{how_to_get_one}"
    );

    let chat = app.create_chat().unwrap();
    let err = app.send(chat.id, "What is 2+2?").unwrap_err();
    assert!(matches!(err, ChatError::ModelNotReady(_)));
    assert!(err.to_string().contains("No model is loaded"), "{err}");
    assert!(
        app.chat(chat.id).unwrap().messages.is_empty(),
        "nothing stored: the text stays in the composer"
    );

    let (_, reply, _) = run(&app, chat.id, "/status");
    assert!(reply.contains("No model is loaded"), "{reply}");
    assert!(reply.contains("Threads:"), "{reply}");
    let (_, reply, _) = run(&app, chat.id, "/model");
    assert!(reply.contains("No model is loaded"), "{reply}");
    assert!(app.regenerate(chat.id, 1).is_err());
}

#[test]
fn help_lists_every_command_and_the_palette_suggests_them() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _rec) = open(dir.path(), None);
    let chat = app.create_chat().unwrap();
    let (name, reply, action) = run(&app, chat.id, "/help");
    assert_eq!(name, "help");
    assert!(action.is_none());
    for c in [
        "/help",
        "/status",
        "/model",
        "/reset",
        "/think",
        "/no_think",
        "/search QUERY",
        "/export",
        "/quote",
    ] {
        assert!(reply.contains(c), "{c} missing from {reply}");
    }
    let names: Vec<_> = app
        .suggest_commands("/t")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["/think"]);
    assert_eq!(app.suggest_commands("").len(), 9);
    assert!(app.suggest_commands("/q")[0]
        .description
        .contains("no model"));
}

#[test]
fn unknown_commands_get_a_suggestion_and_survive_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let chat_id = {
        let (app, _rec) = open(dir.path(), None);
        let chat = app.create_chat().unwrap();
        let (name, reply, _) = run(&app, chat.id, "/stauts please");
        assert_eq!(name, "unknown");
        assert!(
            reply.contains("`/stauts`") && reply.contains("Did you mean `/status`?"),
            "{reply}"
        );
        let (_, reply, _) = run(&app, chat.id, "/frobnicate");
        assert!(
            !reply.contains("Did you mean") && reply.contains("/help"),
            "{reply}"
        );
        chat.id
    };
    let (app, _rec) = open(dir.path(), None);
    let messages = app.chat(chat_id).unwrap().messages;
    assert_eq!(messages.len(), 4, "commands and replies are stored");
    assert!(messages.iter().all(|m| m.kind == MessageKind::Command));
    assert_eq!(messages[0].role, Role::User);
    assert_eq!(messages[0].content, "/stauts please");
    assert_eq!(messages[1].role, Role::Assistant);
    assert_eq!(
        app.chat(chat_id).unwrap().chat.title,
        "New chat",
        "commands do not title a chat"
    );
}

#[test]
fn think_and_no_think_switch_the_chats_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _rec) = open(dir.path(), None);
    let chat = app.create_chat().unwrap();
    assert!(chat.thinking, "thinking is on by default");
    let (_, reply, action) = run(&app, chat.id, "/no_think");
    assert_eq!(action, Some(CommandAction::Thinking { on: false }));
    assert!(reply.contains("off"), "{reply}");
    assert!(!app.chat(chat.id).unwrap().chat.thinking);
    let (_, _, action) = run(&app, chat.id, "/think");
    assert_eq!(action, Some(CommandAction::Thinking { on: true }));
    assert!(app.chat(chat.id).unwrap().chat.thinking);
    let (_, reply, _) = run(&app, chat.id, "/status");
    assert!(reply.contains("thinking on"), "{reply}");
}

#[test]
fn think_with_a_number_sets_the_chats_thinking_budget() {
    let dir = tempfile::tempdir().unwrap();
    let chat_id = {
        let (app, _rec) = open(dir.path(), None);
        let chat = app.create_chat().unwrap();
        assert_eq!(
            chat.thinking_budget, None,
            "new chats use the settings' budget"
        );
        run(&app, chat.id, "/no_think");
        let (_, reply, action) = run(&app, chat.id, "/think 64");
        assert_eq!(action, Some(CommandAction::Thinking { on: true }));
        assert!(reply.contains("at most 64 tokens"), "{reply}");
        let c = app.chat(chat.id).unwrap().chat;
        assert!(c.thinking);
        assert_eq!(c.thinking_budget, Some(64));
        for bad in ["/think lots", "/think 0", "/think -3"] {
            let (_, reply, action) = run(&app, chat.id, bad);
            assert_eq!(action, None, "{bad}: nothing changes");
            assert!(
                reply.contains("number of tokens") || reply.contains("between 1 and"),
                "{bad}: {reply}"
            );
            assert_eq!(
                app.chat(chat.id).unwrap().chat.thinking_budget,
                Some(64),
                "{bad}"
            );
        }
        let (_, reply, _) = run(&app, chat.id, "/status");
        assert!(reply.contains("thinking on, at most 64 tokens"), "{reply}");
        chat.id
    };
    // Kept with the chat; a plain `/think` goes back to the settings' budget.
    let (app, _rec) = open(dir.path(), None);
    assert_eq!(app.chat(chat_id).unwrap().chat.thinking_budget, Some(64));
    let (_, reply, _) = run(&app, chat_id, "/think");
    assert!(
        !reply.contains("at most"),
        "no budget in the settings: {reply}"
    );
    assert_eq!(app.chat(chat_id).unwrap().chat.thinking_budget, None);
}

/// Stores a conversation directly (there is no model to produce one).
fn seed_conversation(dir: &std::path::Path) -> i64 {
    let mut store = Store::open(&common::paths(dir).database()).unwrap();
    let chat = store.create_chat(true, &serde_json::json!({})).unwrap();
    for (role, content) in [
        (Role::User, "How do hedgehogs survive winter?"),
        (
            Role::Assistant,
            "Hedgehogs hibernate | they lower their heart rate.\n\n```sh\necho ```\n```",
        ),
    ] {
        store
            .add_message(NewMessage {
                chat_id: chat.id,
                role,
                kind: MessageKind::Chat,
                content,
                status: MessageStatus::Complete,
            })
            .unwrap();
    }
    chat.id
}

#[test]
fn search_finds_messages_of_every_chat_and_takes_any_query() {
    let dir = tempfile::tempdir().unwrap();
    let old_chat = seed_conversation(dir.path());
    let (app, _rec) = open(dir.path(), None);
    let chat = app.create_chat().unwrap();
    let (name, reply, action) = run(&app, chat.id, "/search hedgehog*");
    assert_eq!(name, "search");
    let Some(CommandAction::Search { query, hits }) = action else {
        panic!("{reply}")
    };
    assert_eq!(query, "hedgehog*");
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.chat_id == old_chat));
    assert!(
        reply.contains("2 result(s)") && reply.contains("**Hedgehogs**"),
        "{reply}"
    );
    for q in [
        "/search",
        "/search ***",
        "/search NEAR(",
        "/search \"unbalanced",
        "/search -",
        "/search zebra",
    ] {
        let (_, reply, _) = run(&app, chat.id, q);
        assert!(!reply.is_empty(), "{q}");
        assert!(!reply.to_lowercase().contains("sqlite"), "{q}: {reply}");
    }
    let (_, reply, _) = run(&app, chat.id, "/search ***");
    assert!(reply.contains("Nothing to search for"), "{reply}");
    let (_, reply, _) = run(&app, chat.id, "/search");
    assert!(reply.contains("Usage"), "{reply}");
    // The search replies themselves are not found by later searches.
    assert_eq!(app.search("hedgehog*").unwrap().len(), 2);
}

#[test]
fn export_gives_the_chat_as_markdown_without_storing_it() {
    let dir = tempfile::tempdir().unwrap();
    let chat_id = seed_conversation(dir.path());
    let (app, _rec) = open(dir.path(), None);
    let before = app.chat(chat_id).unwrap().messages;
    let SendOutcome::Shown {
        command,
        reply,
        action: Some(CommandAction::Export(export)),
    } = app.send(chat_id, "/export").unwrap()
    else {
        panic!("/export is shown, not stored")
    };
    assert_eq!(command, "export");
    // Stored, each export would double the chat (and the next export would contain the last).
    assert_eq!(app.chat(chat_id).unwrap().messages, before);
    assert_eq!(export.file_name, "How-do-hedgehogs-survive-winter.md");
    let md = &export.markdown;
    assert!(
        md.starts_with("# How do hedgehogs survive winter?\n"),
        "{md}"
    );
    assert!(
        md.contains("## You\n\nHow do hedgehogs survive winter?"),
        "{md}"
    );
    assert!(md.contains("## Assistant\n\nHedgehogs hibernate"), "{md}");
    // The reply quotes the document in a fence longer than any inside it.
    assert!(
        reply.contains("````markdown\n# How do hedgehogs"),
        "{reply}"
    );
    assert_eq!(app.export(chat_id).unwrap().file_name, export.file_name);
}

#[test]
fn reset_stores_a_marker_and_the_model_sees_only_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let chat_id = seed_conversation(dir.path());
    let (app, _rec) = open(dir.path(), None);
    let (name, reply, action) = run(&app, chat_id, "/reset");
    assert_eq!(name, "reset");
    assert_eq!(action, Some(CommandAction::ContextReset));
    assert!(reply.starts_with("Context reset"), "{reply}");
    let view = app.chat(chat_id).unwrap();
    let marker = view.messages.last().unwrap();
    assert_eq!(
        (marker.role, marker.kind),
        (Role::System, MessageKind::Reset)
    );
    let store = Store::open(&app.paths().database()).unwrap();
    assert!(store.context(chat_id, None).unwrap().is_empty());
    let md = app.export(chat_id).unwrap().markdown;
    assert!(md.contains("---\n\n*Context reset"), "{md}");
}

#[test]
fn a_double_slash_sends_a_message_starting_with_a_slash() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _rec) = open(dir.path(), None);
    let chat = app.create_chat().unwrap();
    // Not a command: it goes to the model, and there is none.
    assert!(matches!(
        app.send(chat.id, "//etc/hosts?"),
        Err(ChatError::ModelNotReady(_))
    ));
    assert!(matches!(
        app.send(chat.id, "   "),
        Err(ChatError::Invalid(_))
    ));
    assert!(matches!(
        app.send(999, "/help"),
        Err(ChatError::NoSuchChat(999))
    ));
}

#[test]
fn chats_can_be_listed_renamed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (app, rec) = open(dir.path(), None);
    let a = app.create_chat().unwrap();
    let b = app.create_chat().unwrap();
    assert_eq!(app.list_chats().unwrap().len(), 2);
    assert_eq!(app.rename_chat(a.id, "Renamed").unwrap().title, "Renamed");
    app.delete_chat(b.id).unwrap();
    let chats = app.list_chats().unwrap();
    assert_eq!(chats.iter().map(|c| c.id).collect::<Vec<_>>(), [a.id]);
    assert!(matches!(app.chat(b.id), Err(ChatError::NoSuchChat(_))));
    let changes = rec.wait_for(std::time::Duration::from_secs(1), |events| {
        Some(
            events
                .iter()
                .filter(|e| e.name() == "chats_changed")
                .count(),
        )
    });
    assert!(changes >= 4, "{changes}");
}

#[test]
fn settings_updates_are_saved_and_say_what_they_need() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _rec) = open(dir.path(), None);
    let mut s = app.settings();
    s.temperature = Some(0.3);
    let diff = app.update_settings(s.clone()).unwrap();
    assert!(!diff.needs_reload() && !diff.needs_restart());
    assert_eq!(
        chat::Settings::load(&app.paths().settings_file()).unwrap(),
        s
    );
    s.top_p = Some(7.0);
    let err = app.update_settings(s).unwrap_err();
    assert!(err.to_string().contains("top_p"), "{err}");
    assert_eq!(
        app.settings().top_p,
        None,
        "a rejected update changes nothing"
    );
    // Devices explain themselves; only the CPU is usable in this build.
    let devices = app.devices();
    assert!(devices.iter().filter(|d| d.usable).count() == 1 && devices[0].usable);
}

#[test]
fn a_broken_settings_file_is_set_aside_and_the_app_starts() {
    let dir = tempfile::tempdir().unwrap();
    let paths = common::paths(dir.path());
    std::fs::create_dir_all(&paths.config_dir).unwrap();
    std::fs::write(paths.settings_file(), "{ broken").unwrap();
    let (app, _rec) = open(dir.path(), None);
    assert_eq!(app.notices().len(), 1);
    assert!(
        app.notices()[0].contains("default settings"),
        "{:?}",
        app.notices()
    );
    assert!(paths
        .settings_file()
        .with_extension("json.invalid")
        .exists());
    assert_eq!(app.settings(), chat::Settings::default());
}

#[test]
fn run_overrides_are_in_effect_but_never_saved() {
    let dir = tempfile::tempdir().unwrap();
    let paths = common::paths(dir.path());
    let rec = std::sync::Arc::new(common::Recorder::default());
    let overrides = chat::RunOverrides {
        context_len: Some(512),
        ..chat::RunOverrides::default()
    };
    let app = chat::ChatApp::open_with(paths.clone(), rec.sink(), overrides).unwrap();
    assert_eq!(app.settings().context_len, 512);
    let mut s = app.settings();
    s.temperature = Some(0.3);
    app.update_settings(s).unwrap();
    let saved = chat::Settings::load(&paths.settings_file()).unwrap();
    assert_eq!(saved.temperature, Some(0.3), "the change is saved");
    assert_eq!(
        saved.context_len,
        chat::Settings::default().context_len,
        "the override is not"
    );
    assert_eq!(app.settings().context_len, 512, "and stays in effect");
    let bad = chat::RunOverrides {
        threads: Some(0),
        ..chat::RunOverrides::default()
    };
    let dir2 = tempfile::tempdir().unwrap();
    let err = chat::ChatApp::open_with(common::paths(dir2.path()), rec.sink(), bad)
        .err()
        .expect("0 threads is refused");
    assert!(err.to_string().contains("threads"), "{err}");
}

#[test]
fn status_says_where_the_local_server_is() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _rec) = open(dir.path(), None);
    let chat = app.create_chat().unwrap().id;
    let status = |app: &chat::ChatApp| run(app, chat, "/status").1;
    assert!(status(&app).contains("- Local server: off"));
    app.set_server_status(chat::ServerStatus::Listening {
        url: "http://127.0.0.1:8080".into(),
        key_required: false,
    });
    assert!(status(&app).contains("- Local server: http://127.0.0.1:8080 (chat in a browser"));
}
