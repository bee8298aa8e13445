//! The Router's pages and fragments, without a model: what both transports serve.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{fixture, test_model, text, unescape};
use server::{Shell, WithShell};

#[tokio::test]
async fn the_main_page_explains_the_missing_model_and_loads_our_files() {
    let f = fixture();
    let resp = f.get("/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'self'"));
    let html = text(resp).await;
    assert!(html.contains("No model"), "{html}");
    for file in ["/static/sse.js", "/static/app.js", "/vendor/htmx.min.js"] {
        assert!(html.contains(file), "{file} not linked");
        let resp = f.get(file).await;
        assert_eq!(resp.status(), StatusCode::OK, "{file}");
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
    }
    assert_eq!(
        f.get("/static/missing.js").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_unknown_route_or_chat_is_a_404_with_a_toast() {
    let f = fixture();
    let (status, html) = f.htmx("GET", "/nowhere", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("not found: GET /nowhere"), "{html}");
    let (status, html) = f.htmx("GET", "/chats/999", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("chat 999 does not exist"), "{html}");
}

#[tokio::test]
async fn a_chat_is_created_sent_to_listed_and_opened_as_a_page() {
    let f = fixture();
    let cid = f.new_chat().await;
    let (status, html) = f
        .htmx("POST", &format!("/chats/{cid}/messages"), "text=%2Fhelp")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("/status"), "the /help reply: {html}");
    let (_, list) = f.htmx("GET", "/chats", "").await;
    assert!(list.contains(&format!("chat-item-{cid}")), "{list}");
    // Without HX-Request (a browser's address bar), the chat is a whole page.
    let page = unescape(&text(f.get(&format!("/chats/{cid}")).await).await);
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("/status"));
    let (_, pane) = f.htmx("GET", &format!("/chats/{cid}"), "").await;
    assert!(!pane.contains("<!doctype html>"));
}

#[tokio::test]
async fn sending_without_a_model_is_refused_with_a_toast_and_stores_nothing() {
    let f = fixture();
    let cid = f.new_chat().await;
    let (status, html) = f
        .htmx("POST", &format!("/chats/{cid}/messages"), "text=Hello")
        .await;
    assert_eq!(status, StatusCode::OK, "htmx swaps the toast only on 2xx");
    assert!(html.contains("No model is loaded"), "{html}");
    let view = f.server.chat().chat(cid).unwrap();
    assert!(view.messages.is_empty(), "{:?}", view.messages);
}

/// A shell that records what the Router asked of it.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl Shell for Recorder {
    fn open_settings(&self) {
        self.calls.lock().unwrap().push("settings".into());
    }
    fn show_chat(&self, chat_id: i64) {
        self.calls.lock().unwrap().push(format!("chat {chat_id}"));
    }
    fn pick_model_file(&self) -> Option<PathBuf> {
        self.calls.lock().unwrap().push("pick".into());
        None
    }
    fn offer_to_save(&self, file_name: String, _markdown: String) {
        self.calls.lock().unwrap().push(format!("save {file_name}"));
    }
    fn open_url(&self, url: &str) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("open {url}"));
        Ok(())
    }
}

#[tokio::test]
async fn window_actions_go_to_the_shell_in_the_app_and_navigate_in_a_browser() {
    let f = fixture();
    let shell = Arc::new(Recorder::default());
    let with_shell = |uri: &str| {
        let mut req = Request::post(uri)
            .header("hx-request", "true")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(WithShell(shell.clone()));
        req
    };
    for (uri, redirect) in [
        ("/windows/settings", "/settings"),
        ("/quick/open/7", "/chats/7"),
    ] {
        let resp = f.send(with_shell(uri)).await;
        assert!(resp.headers().get("hx-redirect").is_none(), "{uri}");
        let resp = f
            .send(
                Request::post(uri)
                    .header("hx-request", "true")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.headers()["hx-redirect"], redirect, "{uri}");
    }
    f.send(with_shell("/models/import/pick")).await;
    let (_, html) = f.htmx("POST", "/models/import/pick", "").await;
    assert!(html.contains("needs the desktop app"), "{html}");
    assert_eq!(*shell.calls.lock().unwrap(), ["settings", "chat 7", "pick"]);
}

#[tokio::test]
async fn export_offers_a_save_dialog_only_in_the_app() {
    let f = fixture();
    let cid = f.new_chat().await;
    let shell = Arc::new(Recorder::default());
    let mut req = Request::post(format!("/chats/{cid}/messages"))
        .header("hx-request", "true")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("text=%2Fexport"))
        .unwrap();
    req.extensions_mut().insert(WithShell(shell.clone()));
    let html = unescape(&text(f.send(req).await).await);
    assert!(html.contains("This chat as Markdown"), "{html}");
    let calls = shell.calls.lock().unwrap().clone();
    assert!(
        calls.len() == 1 && calls[0].starts_with("save ") && calls[0].ends_with(".md"),
        "{calls:?}"
    );
    let (_, html) = f
        .htmx("POST", &format!("/chats/{cid}/messages"), "text=%2Fexport")
        .await;
    assert!(html.contains("This chat as Markdown"), "{html}");
    let chat = f.server.chat().chat(cid).unwrap();
    assert!(
        chat.messages.is_empty(),
        "an export is not stored in the chat"
    );
}

#[tokio::test]
async fn settings_render_and_save_from_the_form() {
    let f = fixture();
    let (status, html) = f.htmx("GET", "/settings", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("name=\"temperature\""), "{html}");
    let (_, saved) = f
        .htmx("POST", "/settings", "temperature=0.3&thinking=on")
        .await;
    assert!(saved.contains("Saved."), "{saved}");
    assert_eq!(f.server.chat().settings().temperature, Some(0.3));
    let (_, bad) = f.htmx("POST", "/settings", "top_p=lots").await;
    assert!(bad.contains("Top-p"), "{bad}");
}

#[tokio::test]
async fn the_settings_form_makes_an_endpoint_the_model_and_names_a_bad_url() {
    let f = fixture();
    let (_, html) = f.htmx("GET", "/settings", "").await;
    assert!(
        html.contains("name=\"endpoint_url\"") && html.contains("value=\"local\" checked"),
        "{html}"
    );
    // Port 1 on loopback: nothing listens, so the check fails at once, with the reason.
    let form = "model_source=endpoint&endpoint_url=http%3A%2F%2F127.0.0.1%3A1&endpoint_model=&endpoint_api_key=&endpoint_timeout=5";
    let (_, saved) = f.htmx("POST", "/settings", form).await;
    assert!(saved.contains("reloading"), "{saved}");
    let s = f.server.chat().settings();
    assert_eq!(s.model_source, chat::ModelSource::Endpoint);
    assert_eq!(s.endpoint.base_url, "http://127.0.0.1:1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match f.server.chat().model_state() {
            chat::ModelState::RemoteFailed { url, error } => {
                assert_eq!(url, "http://127.0.0.1:1/v1");
                assert!(
                    matches!(*error, chat::ChatError::EndpointUnreachable { .. }),
                    "{error:?}"
                );
                assert!(error.to_string().contains("cannot reach"), "{error}");
                break;
            }
            other => assert!(std::time::Instant::now() < deadline, "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, html) = f.htmx("GET", "/settings", "").await;
    assert!(html.contains("value=\"endpoint\" checked"), "{html}");
    assert!(
        html.contains("placeholder=\"server's\""),
        "an empty sampling field is the endpoint's default: {html}"
    );
    let (_, bad) = f
        .htmx(
            "POST",
            "/settings",
            "model_source=endpoint&endpoint_url=gpu-box",
        )
        .await;
    assert!(bad.contains("endpoint.base_url"), "{bad}");
}

#[tokio::test]
async fn regenerate_refuses_a_message_of_another_chat() {
    let f = fixture();
    let (a, b) = (f.new_chat().await, f.new_chat().await);
    f.htmx("POST", &format!("/chats/{a}/messages"), "text=%2Fhelp")
        .await;
    let mid = f.server.chat().chat(a).unwrap().messages[1].id;
    let (status, html) = f
        .htmx("POST", &format!("/chats/{b}/messages/{mid}/regenerate"), "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{html}");
    assert_eq!(
        f.server.chat().chat(a).unwrap().messages.len(),
        2,
        "chat {a} is untouched"
    );
}

#[tokio::test]
async fn quick_chat_without_a_model_leaves_no_empty_chat() {
    let f = fixture();
    let (status, html) = f.htmx("POST", "/quick", "text=Hello").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("No model is loaded"), "{html}");
    assert!(f.server.chat().list_chats().unwrap().is_empty());
    // A command needs no model: its chat stays.
    f.htmx("POST", "/quick", "text=%2Fhelp").await;
    assert_eq!(f.server.chat().list_chats().unwrap().len(), 1);
}

#[tokio::test]
async fn event_replay_after_the_largest_id_does_not_overflow() {
    let f = fixture();
    let cid = f.new_chat().await;
    let resp = f
        .get(&format!("/chats/{cid}/events?after={}", u64::MAX))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let frames: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    assert_eq!(frames[0]["event"], "complete", "{frames}");
    assert_eq!(frames[0]["id"], u64::MAX, "{frames}");
}

#[tokio::test]
async fn search_lists_each_chat_once() {
    let f = fixture();
    let cid = f.new_chat().await;
    let mut store = chat::Store::open(&f.server.chat().paths().database()).unwrap();
    for text in ["otters hold hands", "do otters sleep?", "otters otters"] {
        store
            .add_message(chat::store::NewMessage {
                chat_id: cid,
                role: chat::Role::User,
                kind: chat::MessageKind::Chat,
                content: text,
                status: chat::MessageStatus::Complete,
            })
            .unwrap();
    }
    let (_, html) = f.htmx("GET", "/chats?q=otters", "").await;
    let rows = html.matches(&format!("id=\"chat-item-{cid}\"")).count();
    assert_eq!(rows, 1, "{html}");
}

#[tokio::test]
async fn the_model_in_use_is_listed_even_from_outside_the_models_folder() {
    let f = fixture();
    let (_, html) = f.htmx("GET", "/settings", "").await;
    assert!(html.contains("No models in"), "{html}");
    f.server.chat().load_model(test_model()).unwrap();
    let (_, html) = f.htmx("GET", "/settings", "").await;
    assert!(
        !html.contains("No models in") && html.contains("SmolLM2-135M-Instruct.Q4_1.gguf"),
        "{html}"
    );
    assert!(
        html.contains("in use") && html.contains("outside the models folder"),
        "{html}"
    );
}

#[tokio::test]
async fn links_in_answers_open_in_the_system_browser_and_only_web_or_mail_links() {
    let f = fixture();
    let shell = Arc::new(Recorder::default());
    let open = |url: &str| {
        let mut req = Request::post("/open-link")
            .header("hx-request", "true")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!(
                "url={}",
                url.replace('&', "%26").replace(':', "%3A")
            )))
            .unwrap();
        req.extensions_mut().insert(WithShell(shell.clone()));
        req
    };
    f.send(open("https://example.com/a?b=1&c=2")).await;
    for bad in [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "https://",
        "smb://host/x",
        "https://a b",
    ] {
        let html = unescape(&text(f.send(open(bad)).await).await);
        assert!(
            html.contains("only web (http, https) and mail links"),
            "{bad}: {html}"
        );
    }
    assert_eq!(
        *shell.calls.lock().unwrap(),
        ["open https://example.com/a?b=1&c=2"]
    );
    let (_, html) = f
        .htmx("POST", "/open-link", "url=https%3A%2F%2Fexample.com")
        .await;
    assert!(html.contains("a browser opens links itself"), "{html}");
}

#[tokio::test]
async fn a_settings_file_moved_aside_is_announced_in_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let paths = chat::AppPaths {
        data_dir: dir.path().join("data"),
        config_dir: dir.path().join("config"),
        models_dir: dir.path().join("models"),
    };
    std::fs::create_dir_all(&paths.config_dir).unwrap();
    std::fs::write(paths.settings_file(), "{not json").unwrap();
    let hub = server::Hub::new();
    let app = chat::ChatApp::open(paths, hub.sink()).unwrap();
    let s = server::Server::new(app, hub, server::Downloads::default());
    let resp =
        tower::ServiceExt::oneshot(s.router(), Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
    let html = unescape(&text(resp).await);
    assert!(
        html.contains("id=\"notices\"") && html.contains("settings.json.invalid"),
        "{html}"
    );
}

#[tokio::test]
async fn download_errors_stay_download_errors() {
    let f = fixture();
    let (status, html) = f.htmx("POST", "/models/download/no-such-model", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{html}");
    assert!(
        html.contains("no model \"no-such-model\" in the catalog"),
        "{html}"
    );
    let (status, html) = f
        .htmx("POST", "/models/import", "path=%2Fnowhere%2Fmodel.gguf")
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a refusal is shown as a toast: {html}"
    );
    assert!(html.contains("/nowhere/model.gguf"), "{html}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_servers_are_added_edited_and_removed_as_form_fields_with_errors_beside_them() {
    let f = fixture();
    let (_, html) = f.htmx("GET", "/settings", "").await;
    assert!(
        html.contains("id=\"mcp-list\"") && html.contains("hx-get=\"/settings/mcp/new?index=0\""),
        "{html}"
    );
    // "Add a server": an empty entry, and the button for the next one.
    let (_, added) = f.htmx("GET", "/settings/mcp/new?index=0", "").await;
    assert!(added.contains("name=\"mcp_0_name\" value=\"\""), "{added}");
    assert!(added.contains("/settings/mcp/new?index=1"), "{added}");

    // A bad name is said beside its field (the chat core's rule), and nothing is saved.
    let (_, bad) = f
        .htmx(
            "POST",
            "/settings",
            "tools_max_steps=5&mcp_0_name=my+files&mcp_0_command=npx",
        )
        .await;
    let slot = "id=\"mcp-0-name-error\" hx-swap-oob=\"true\">";
    let at = bad.find(slot).expect(&bad);
    assert!(bad[at..].contains("use only letters"), "{bad}");
    assert!(bad.contains("id=\"mcp-0-command-error\" hx-swap-oob=\"true\"></span>"));
    assert!(f.server.chat().settings().tools.mcp_servers.is_empty());

    // Saved (switched off, so nothing starts): the list comes back numbered as saved.
    let form = "tools_max_steps=5&mcp_4_name=files&mcp_4_command=npx&mcp_4_args=-y%0D%0Afs%0D%0A&mcp_4_env=ROOT%3D%2Ftmp";
    let (_, saved) = f.htmx("POST", "/settings", form).await;
    assert!(saved.contains("Saved."), "{saved}");
    let (_, list) = f.htmx("GET", "/settings/mcp", "").await;
    assert!(
        list.contains("hx-trigger=\"mcp-servers-saved from:body\"")
            && list.contains("name=\"mcp_0_name\" value=\"files\"")
            && list.contains("switched off")
            && list.contains("/settings/mcp/new?index=1"),
        "{list}"
    );
    let servers = f.server.chat().settings().tools.mcp_servers;
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].args, ["-y", "fs"]);
    assert_eq!(servers[0].env["ROOT"], "/tmp");
    assert!(!servers[0].enabled);

    // Edited; then a second one named the same is refused beside its own name.
    f.htmx(
        "POST",
        "/settings",
        "tools_max_steps=5&mcp_0_name=files&mcp_0_command=uvx",
    )
    .await;
    assert_eq!(
        f.server.chat().settings().tools.mcp_servers[0].command,
        "uvx"
    );
    let (_, twice) = f
        .htmx(
            "POST",
            "/settings",
            "tools_max_steps=5&mcp_0_name=files&mcp_0_command=uvx&mcp_1_name=files&mcp_1_command=npx",
        )
        .await;
    let at = twice
        .find("id=\"mcp-1-name-error\" hx-swap-oob=\"true\">")
        .expect(&twice);
    assert!(twice[at..].contains("two servers are named"), "{twice}");

    // Removed: its entry is not in the form any more.
    f.htmx("POST", "/settings", "tools_max_steps=5").await;
    assert!(f.server.chat().settings().tools.mcp_servers.is_empty());
}
