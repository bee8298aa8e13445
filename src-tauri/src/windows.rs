//! Native windows (main, settings, quick chat), the tray icon and the global quick-chat shortcut.
//!
//! Every window loads its page from the app's own `app://` protocol, so htmx requests are same-origin.
//! Nothing else is ever shown in a window ([`navigation`]): a web or mail link that gets past the
//! page's own link handling opens in the system browser, anything else is refused.

use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::{MouseButton, MouseButtonState, TrayIconBuilder, TrayIconEvent};
use tauri::webview::NewWindowResponse;
use tauri::{AppHandle, Manager, Runtime, Url, WebviewUrl, WebviewWindow, WebviewWindowBuilder};
use tauri_plugin_global_shortcut::{GlobalShortcutExt, ShortcutState};

pub const MAIN: &str = "main";
pub const SETTINGS: &str = "settings";
pub const QUICK: &str = "quick";

/// The URL of `path` on our protocol: `app://localhost/…` (Linux, macOS) or `http://app.localhost/…`.
fn page_url(path: &str) -> tauri::Url {
    let base = if cfg!(any(windows, target_os = "android")) {
        "http://app.localhost"
    } else {
        "app://localhost"
    };
    format!("{base}{path}").parse().expect("static URL")
}

fn app_url(path: &str) -> WebviewUrl {
    WebviewUrl::CustomProtocol(page_url(path))
}

/// What a window does with a navigation to a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Navigation {
    /// The app's own pages (`app://localhost/…`), Tauri's own (`tauri://localhost`), `about:blank`.
    Stay,
    /// A web or mail link: opened in the system's browser or mail program, never in the app.
    OpenOutside,
    /// Anything else (`file:`, `javascript:`, `data:`, a scheme some program registered).
    Refuse,
}

/// Where a window may go: only the app's own origin stays in it (the same scheme, host and port
/// as [`page_url`], so `app://evil.example` or `http://app.localhost:8080` do not).
pub fn navigation(url: &Url) -> Navigation {
    let own = page_url("/");
    let same_origin = url.scheme() == own.scheme()
        && url.host_str() == own.host_str()
        && url.port_or_known_default() == own.port_or_known_default();
    match url.scheme() {
        _ if same_origin => Navigation::Stay,
        "tauri" if url.host_str() == Some("localhost") => Navigation::Stay,
        "about" if url.path() == "blank" => Navigation::Stay,
        "http" | "https" | "mailto" if server::shell::may_leave_the_app(url.as_str()) => {
            Navigation::OpenOutside
        }
        _ => Navigation::Refuse,
    }
}

/// Applies [`navigation`] to a navigation of a window: `true` lets it happen in the window.
fn guard_navigation(url: &Url) -> bool {
    match navigation(url) {
        Navigation::Stay => true,
        Navigation::OpenOutside => {
            tracing::info!(%url, "a link leaves the app: opened in the system browser");
            if let Err(e) = crate::shell::open_in_browser(url.as_str()) {
                tracing::warn!(%url, error = %e, "could not open a link outside the app");
            }
            false
        }
        Navigation::Refuse => {
            tracing::warn!(%url, "refused a navigation away from the app");
            false
        }
    }
}

/// Every window's guard: navigations pass [`guard_navigation`], and no page opens a window of its
/// own (`target=_blank`, `window.open`): a web link asked for one opens in the browser instead.
fn guarded<'a, R: Runtime, M: Manager<R>>(
    builder: WebviewWindowBuilder<'a, R, M>,
) -> WebviewWindowBuilder<'a, R, M> {
    builder
        .on_navigation(guard_navigation)
        .on_new_window(|url, _features| {
            if navigation(&url) == Navigation::OpenOutside {
                guard_navigation(&url);
            } else {
                tracing::warn!(%url, "refused a new window");
            }
            NewWindowResponse::Deny
        })
}

/// Shows (creating if needed) and focuses the window `label`.
fn show(app: &AppHandle, label: &str, make: impl FnOnce() -> tauri::Result<WebviewWindow>) {
    let win = match app.get_webview_window(label) {
        Some(w) => Ok(w),
        None => make(),
    };
    match win {
        Ok(w) => {
            let _ = w.unminimize();
            let _ = w.show();
            let _ = w.set_focus();
        }
        Err(e) => tracing::error!(window = label, error = %e, "could not open window"),
    }
}

pub fn open_main(app: &AppHandle) {
    show(app, MAIN, || {
        guarded(WebviewWindowBuilder::new(app, MAIN, app_url("/")))
            .title("NotSo-SmolLM3 Bot")
            .inner_size(1100.0, 760.0)
            .min_inner_size(640.0, 480.0)
            .build()
    });
}

/// Opens the main window on chat `chat_id` (from quick chat).
pub fn show_chat_in_main(app: &AppHandle, chat_id: i64) {
    open_main(app);
    if let Some(w) = app.get_webview_window(MAIN) {
        if let Err(e) = w.navigate(page_url(&format!("/chats/{chat_id}"))) {
            tracing::warn!(error = %e, "could not open the chat in the main window");
        }
    }
}

pub fn open_settings(app: &AppHandle) {
    show(app, SETTINGS, || {
        guarded(WebviewWindowBuilder::new(
            app,
            SETTINGS,
            app_url("/settings"),
        ))
        .title("Settings — NotSo-SmolLM3 Bot")
        .inner_size(680.0, 760.0)
        .build()
    });
}

pub fn open_quick(app: &AppHandle) {
    show(app, QUICK, || {
        guarded(WebviewWindowBuilder::new(app, QUICK, app_url("/quick")))
            .title("Quick chat")
            .inner_size(560.0, 380.0)
            .always_on_top(true)
            .skip_taskbar(true)
            .center()
            .build()
    });
}

/// Quick chat toggles: the shortcut hides it when it is the focused window.
pub fn toggle_quick(app: &AppHandle) {
    if let Some(w) = app.get_webview_window(QUICK) {
        if w.is_visible().unwrap_or(false) && w.is_focused().unwrap_or(false) {
            let _ = w.hide();
            return;
        }
    }
    open_quick(app);
}

/// The tray icon: Quick chat / Open / Settings / Quit. A left click opens the main window.
pub fn build_tray(app: &AppHandle) -> tauri::Result<()> {
    let quick = MenuItem::with_id(app, "quick", "Quick chat", true, None::<&str>)?;
    let open = MenuItem::with_id(app, "open", "Open NotSo-SmolLM3", true, None::<&str>)?;
    let settings = MenuItem::with_id(app, "settings", "Settings…", true, None::<&str>)?;
    let sep = PredefinedMenuItem::separator(app)?;
    let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
    let menu = Menu::with_items(app, &[&quick, &open, &settings, &sep, &quit])?;
    let mut tray = TrayIconBuilder::with_id("main")
        .tooltip("NotSo-SmolLM3 Bot")
        .menu(&menu)
        .show_menu_on_left_click(false)
        .on_menu_event(|app, event| match event.id().as_ref() {
            "quick" => open_quick(app),
            "open" => open_main(app),
            "settings" => open_settings(app),
            "quit" => app.exit(0),
            _ => {}
        })
        .on_tray_icon_event(|tray, event| {
            if let TrayIconEvent::Click {
                button: MouseButton::Left,
                button_state: MouseButtonState::Up,
                ..
            } = event
            {
                open_main(tray.app_handle());
            }
        });
    if let Some(icon) = app.default_window_icon() {
        tray = tray.icon(icon.clone());
    }
    tray.build(app)?;
    Ok(())
}

/// Registers `shortcut` (e.g. `CommandOrControl+Shift+Space`) for quick chat, replacing the previous one.
pub fn set_quick_shortcut(app: &AppHandle, shortcut: &str) -> Result<(), String> {
    let gs = app.global_shortcut();
    let _ = gs.unregister_all();
    if shortcut.trim().is_empty() {
        return Ok(());
    }
    gs.on_shortcut(shortcut, |app, _shortcut, event| {
        if event.state == ShortcutState::Pressed {
            toggle_quick(app);
        }
    })
    .map_err(|e| format!("the shortcut “{shortcut}” could not be registered: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nav(url: &str) -> Navigation {
        navigation(&url.parse().expect("a URL"))
    }

    #[test]
    fn the_apps_own_pages_stay_in_the_window() {
        for path in ["/", "/chats/12", "/settings", "/quick?x=1#end"] {
            assert_eq!(navigation(&page_url(path)), Navigation::Stay, "{path}");
        }
        assert_eq!(nav("tauri://localhost/"), Navigation::Stay);
        // Only Tauri's own host: any other under its scheme is no page of the app's.
        assert_eq!(nav("tauri://evil.example/"), Navigation::Refuse);
        assert_eq!(nav("about:blank"), Navigation::Stay);
    }

    #[test]
    fn web_and_mail_links_open_outside_the_app() {
        for url in [
            "https://example.com/page?q=1",
            "http://example.com",
            "https://huggingface.co/HuggingFaceTB/SmolLM3-3B",
            "mailto:someone@example.com",
            // Our host name over the web, or on another port, is not our protocol.
            #[cfg(not(any(windows, target_os = "android")))]
            "http://app.localhost/",
            "http://app.localhost:8080/",
        ] {
            assert_eq!(nav(url), Navigation::OpenOutside, "{url}");
        }
    }

    #[test]
    fn other_schemes_and_lookalike_origins_are_refused() {
        for url in [
            "file:///etc/passwd",
            "javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "about:config",
            "ftp://example.com/file",
            "vscode://some/command",
            "app://evil.example/",
            "app://localhost:9/",
            "mailto:",
        ] {
            assert_eq!(nav(url), Navigation::Refuse, "{url}");
        }
    }
}
