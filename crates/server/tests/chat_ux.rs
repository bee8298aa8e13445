//! Follow-up chips (and edits) as the page shows them, with the SmolLM2 test model.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{fixture_with, test_model, Fixture};
use server::hub::{PageEvent, StateEvent};

fn model_settings() -> chat::Settings {
    chat::Settings {
        model_path: Some(test_model()),
        temperature: Some(0.0),
        max_tokens: 24,
        context_len: 2048,
        ..chat::Settings::default()
    }
}

async fn ready() -> Fixture {
    let f = fixture_with(Some(&model_settings()));
    let start = Instant::now();
    while !f.server.chat().model_state().is_ready() {
        assert!(start.elapsed() < Duration::from_secs(60), "the model loads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f
}

async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The questions of the chips in `html`, in order.
fn chips(html: &str) -> Vec<String> {
    html.split("<button class=\"chip\"")
        .skip(1)
        .map(|b| b[b.find('>').unwrap() + 1..b.find("</button>").unwrap()].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_up_chips_appear_under_the_answer_send_their_question_and_go_when_typing() {
    let f = ready().await;
    let news = Arc::new(Mutex::new(Vec::new()));
    let seen = news.clone();
    f.server.hub().listen(move |e| {
        if let PageEvent::State(s) = e {
            seen.lock().unwrap().push(s.clone());
        }
    });
    let cid = f.new_chat().await;
    let (status, _) = f
        .htmx(
            "POST",
            &format!("/chats/{cid}/messages"),
            // Greedy SmolLM2-135M lists three questions after this one (after "Name a fruit."
            // it only repeats the instruction, which is no suggestion).
            "text=Tell+me+about+the+moon.",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let questions = until("follow-ups", || f.server.chat().follow_ups(cid))
        .await
        .questions;
    assert!(!questions.is_empty(), "this question gets suggestions");
    let told = StateEvent {
        chat: Some(cid),
        ..StateEvent::trigger("follow-ups-changed")
    };
    assert!(news.lock().unwrap().contains(&told), "the page is told");

    let (_, fragment) = f.htmx("GET", &format!("/chats/{cid}/follow-ups"), "").await;
    assert_eq!(chips(&fragment), questions, "{fragment}");
    for q in &questions {
        // Each chip sends its question as the composer would.
        assert!(
            fragment.contains(&format!("name=\"text\" value=\"{q}\"")),
            "{fragment}"
        );
    }
    assert_eq!(
        fragment
            .matches(&format!("hx-post=\"/chats/{cid}/messages\""))
            .count(),
        questions.len()
    );
    // The chat pane shows them right under the latest answer, inside the scrolled messages (not
    // apart above the composer), refreshed when the chat's news says so.
    let (_, pane) = f.htmx("GET", &format!("/chats/{cid}"), "").await;
    let at = pane.find("id=\"follow-ups-").expect("the container");
    let last_answer = pane.rfind("class=\"msg assistant").expect("an answer");
    let messages_end = pane.find("</section>").expect("the messages' end");
    assert!(
        last_answer < at && at < messages_end,
        "the chips are not under the latest answer: {pane}"
    );
    let container = &pane[at..];
    assert!(
        container.contains(&format!("follow-ups-changed-{cid} from:body")),
        "{container}"
    );
    assert_eq!(chips(container), questions);

    // Typing dismisses them.
    let (status, _) = f
        .htmx("POST", &format!("/chats/{cid}/follow-ups/dismiss"), "")
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, fragment) = f.htmx("GET", &format!("/chats/{cid}/follow-ups"), "").await;
    assert!(chips(&fragment).is_empty(), "{fragment}");
}

/// Waits until the chat has no answer in progress.
async fn until_idle(f: &Fixture, cid: i64) {
    until("the answer ends", || {
        (!f.server.chat().chat(cid).unwrap().busy).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sent_message_is_edited_in_place_and_its_versions_are_switched_with_arrows_and_deleted() {
    let f = ready().await;
    let cid = f.new_chat().await;
    f.htmx(
        "POST",
        &format!("/chats/{cid}/messages"),
        "text=Name+a+colour.",
    )
    .await;
    until_idle(&f, cid).await;
    let messages = f.server.chat().chat(cid).unwrap().messages;
    let (mid, answer) = (messages[0].id, messages[1].id);

    let (_, pane) = f.htmx("GET", &format!("/chats/{cid}"), "").await;
    let edit = format!("hx-get=\"/chats/{cid}/messages/{mid}/edit\"");
    assert!(
        pane.contains(&edit),
        "an Edit button on the question: {pane}"
    );
    assert!(
        !pane.contains(&format!("/messages/{answer}/edit")),
        "none on the answer"
    );
    assert!(!pane.contains("class=\"branches\""), "one version only");

    let (status, form) = f
        .htmx("GET", &format!("/chats/{cid}/messages/{mid}/edit"), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(form.contains(">Name a colour.</textarea>"), "{form}");
    assert!(
        form.contains("name=\"keep\" value=\"on\" checked"),
        "{form}"
    );
    assert!(form.contains(&format!("hx-post=\"/chats/{cid}/messages/{mid}/edit\"")));
    let (status, _) = f
        .htmx("GET", &format!("/chats/{cid}/messages/{answer}/edit"), "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an answer is not edited");

    let (status, pane) = f
        .htmx(
            "POST",
            &format!("/chats/{cid}/messages/{mid}/edit"),
            "text=Name+a+fruit.&keep=on",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        pane.contains("Name a fruit.") && !pane.contains("Name a colour."),
        "{pane}"
    );
    assert!(pane.contains("class=\"branch-index\">2/2<"), "{pane}");
    assert!(pane.contains("streaming"), "the new answer streams: {pane}");
    until_idle(&f, cid).await;
    let new_mid = f.server.chat().chat(cid).unwrap().messages[0].id;
    assert_ne!(new_mid, mid);

    let (status, pane) = f
        .htmx(
            "POST",
            &format!("/chats/{cid}/messages/{new_mid}/branch?to=previous"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        pane.contains("Name a colour.") && !pane.contains("Name a fruit."),
        "{pane}"
    );
    assert!(pane.contains("class=\"branch-index\">1/2<"), "{pane}");
    let (status, html) = f
        .htmx(
            "POST",
            &format!("/chats/{cid}/messages/{mid}/branch?to=sideways"),
            "",
        )
        .await;
    // A refusal is a toast (answered 200 so htmx shows it).
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("previous or next"), "{html}");

    // "Delete this version", asking first: the version shown goes, the other one is shown.
    let delete = format!("hx-delete=\"/chats/{cid}/messages/{mid}/version\"");
    let at = pane
        .find(&delete)
        .expect("a delete button beside the versions");
    assert!(pane[at..]
        .split('>')
        .next()
        .unwrap()
        .contains("hx-confirm="));
    let (status, pane) = f
        .htmx(
            "DELETE",
            &format!("/chats/{cid}/messages/{mid}/version"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        pane.contains("Name a fruit.") && !pane.contains("Name a colour."),
        "{pane}"
    );
    assert!(
        !pane.contains("class=\"branches\""),
        "one version left: {pane}"
    );
    let (_, html) = f
        .htmx(
            "DELETE",
            &format!("/chats/{cid}/messages/{new_mid}/version"),
            "",
        )
        .await;
    assert!(html.contains("no other version"), "{html}");
}
