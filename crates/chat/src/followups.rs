//! Follow-up suggestions: after a chat's answer, up to [`MAX_QUESTIONS`] short next questions,
//! shown as chips under it and sent when clicked. Never stored as messages.
//!
//! They cost only their own tokens: the worker generates them right after the answer, on the same
//! backend, from the answer's conversation with the answer and [`INSTRUCTION`] appended, so the
//! engine reuses the whole cached prefix (the chat is not prefilled again). The user typing or
//! sending cancels them ([`crate::ChatApp::dismiss_follow_ups`]); the model's text is parsed by
//! [`parse`], and no suggestion at all is a valid outcome.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::sampling::check_range;
use crate::stats::MessageStats;
use crate::store::{ChatId, MessageId};

/// Most suggestions shown.
pub const MAX_QUESTIONS: usize = 3;
/// Longest suggestion kept, in characters: a chip is a short question, not a paragraph.
pub const MAX_QUESTION_CHARS: usize = 80;
/// Highest sampling temperature the suggestions use (a lower chat temperature wins). With the
/// chat's default temperature SmolLM2-135M mostly chats on instead of listing questions; at
/// this one most of its replies are a usable list.
pub const MAX_TEMPERATURE: f32 = 0.3;

/// The user's turn appended after the answer. Asked as the user, so every chat template renders
/// it as an ordinary turn after the answer (the cached prefix stays intact). Worded as a question
/// because small models answer a question with a list far more often than they follow an order.
pub const INSTRUCTION: &str =
    "What three short questions could I ask you next about this? List only the questions, one per line.";

/// The follow-up settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FollowUpSettings {
    /// Whether answers get follow-up suggestions.
    pub enabled: bool,
    /// Most tokens the suggestions may take (they are generated after every answer).
    pub max_tokens: usize,
}

impl Default for FollowUpSettings {
    fn default() -> Self {
        FollowUpSettings {
            enabled: true,
            max_tokens: 80,
        }
    }
}

impl FollowUpSettings {
    pub fn validate(&self) -> crate::Result<()> {
        check_range("follow_ups.max_tokens", Some(self.max_tokens), 16, 512)
    }
}

/// An answer's suggestions, and the numbers of the generation that made them (its prompt's
/// cached tokens show the prefix was reused).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FollowUps {
    pub chat_id: ChatId,
    /// The answer they follow.
    pub message_id: MessageId,
    pub questions: Vec<String>,
    pub stats: MessageStats,
}

/// Words a suggestion that is an order rather than a question may start with
/// ("Tell me more about Lyon").
const REQUESTS: [&str; 10] = [
    "tell",
    "explain",
    "describe",
    "compare",
    "show",
    "give",
    "list",
    "suggest",
    "summarize",
    "recommend",
];

/// What a preamble may open with before the question on the same line ("Sure, what…?").
const INTERJECTIONS: [&str; 6] = ["sure", "certainly", "of course", "okay", "ok", "great"];

/// The suggestions in the model's reply to [`INSTRUCTION`] after the user `asked` something.
///
/// One per line; a line listing several (`1. A? 2. B?`) is split. List markers (`1.`, `2)`,
/// `-`, `*`, `•`), labels (`Q:`, `Question:`), quotes and emphasis are removed. Kept are only
/// short questions-like lines: one sentence that ends with `?` or starts with a request word
/// ([`REQUESTS`]), at most [`MAX_QUESTION_CHARS`]. Dropped are preambles and statements (the
/// model chatting on), answers (`A: …`), questions about questions (echoes of the instruction),
/// the user's own question again, questions put to the assistant about itself ([`about_the_assistant`]),
/// and repeats (ignoring case and articles); at most [`MAX_QUESTIONS`].
pub fn parse(text: &str, asked: &str) -> Vec<String> {
    let mut seen = HashSet::from([normal_form(asked)]);
    let mut out = Vec::new();
    for q in text.lines().flat_map(split_numbered).map(|l| clean(&l)) {
        if out.len() == MAX_QUESTIONS {
            break;
        }
        if is_suggestion(&q) && seen.insert(normal_form(&q)) {
            out.push(q);
        }
    }
    out
}

/// Whether a cleaned line reads as one short next question.
fn is_suggestion(q: &str) -> bool {
    let lower = q.to_lowercase();
    let first = lower
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("");
    let question = q.ends_with('?') || REQUESTS.contains(&first);
    // A sentence end inside the line means a remark before (or after) the question.
    let body = q.trim_end_matches(['?', '.', '!']);
    let one_sentence = [". ", "? ", "! "].iter().all(|end| !body.contains(end));
    question
        && one_sentence
        && q.split_whitespace().count() >= 2
        && q.chars().count() <= MAX_QUESTION_CHARS
        && !lower.contains("question")
        && !about_the_assistant(&lower)
}

/// Words that open a request put politely to the assistant ("Can you explain tides?"): the user
/// may well ask that next.
const POLITE_OPENINGS: [&str; 5] = ["can you", "could you", "would you", "will you", "please"];

/// Whether a (lower-case) suggestion asks the assistant about itself, as the small models'
/// suggestions often do when they take the user's part ("What's the most exciting thing you've
/// ever seen?", "How do you feel about the way I've portrayed Hamlet?"): a second-person word
/// anywhere but in a polite opening.
fn about_the_assistant(lower: &str) -> bool {
    let rest = POLITE_OPENINGS
        .iter()
        .find_map(|opening| lower.strip_prefix(opening))
        .unwrap_or(lower);
    rest.split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '’')
        .map(|w| w.split(['\'', '’']).next().unwrap_or(""))
        .any(|w| ["you", "your", "yours", "yourself"].contains(&w))
}

/// The question's words, lower case, contractions spelt out and articles left out: "What's it?"
/// == "what is it", and "How far is the Moon from Earth?" == "How far is the moon from the
/// Earth?" (two chips that differ by an article read as one question asked twice).
fn normal_form(q: &str) -> String {
    q.to_lowercase()
        .replace("'s ", " is ")
        .replace("’s ", " is ")
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && !["a", "an", "the"].contains(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A line that lists several numbered items inline (`1. A? 2. B?`), one item each; any other
/// line as it is.
fn split_numbered(line: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut rest = line;
    let mut n = 2;
    // Only the next number in sequence after a question mark starts an item, so a number in a
    // question ("3.5 or 4?") never splits it.
    while let Some(at) = rest.find(&format!("? {n}. ")) {
        items.push(rest[..=at].to_string());
        rest = &rest[at + 2..];
        n += 1;
    }
    items.push(rest.to_string());
    items
}

/// One line without its list marker, label, interjection, emphasis and quotes, whitespace
/// collapsed.
fn clean(line: &str) -> String {
    let s = strip_number(line.trim());
    let s = s.trim_start_matches(['-', '*', '•', '–', '+']).trim();
    let s = strip_label(s.trim_start_matches(|c: char| "*_`\"“”'".contains(c)));
    let s = strip_interjection(s);
    s.trim_matches(|c: char| "*_`\"“”'".contains(c))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `s` without a leading `Q:` or `Question:` label.
fn strip_label(s: &str) -> &str {
    for label in ["Question:", "question:", "Q:", "q:"] {
        if let Some(rest) = s.strip_prefix(label) {
            return rest.trim_start();
        }
    }
    s
}

/// `s` without a leading "Sure, " or "Of course! " (the question after it is kept).
fn strip_interjection(s: &str) -> &str {
    for word in INTERJECTIONS {
        if s.get(..word.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(word))
        {
            if let Some(rest) = s[word.len()..].strip_prefix([',', '!', '.']) {
                return rest.trim_start();
            }
        }
    }
    s
}

/// `s` without a leading `1.`, `2)`, `(3)` or `Q4:` (one or two digits, then a space or the end):
/// a number that belongs to the question (`2024 was…`, `3.5 or 4?`) stays.
fn strip_number(s: &str) -> &str {
    let t = s.strip_prefix('(').unwrap_or(s);
    let t = t.strip_prefix(['Q', 'q']).unwrap_or(t);
    let digits = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits > 2 {
        return s;
    }
    match t[digits..].strip_prefix(['.', ')', ':']) {
        Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => rest,
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_lines_and_bullets_become_plain_questions() {
        let text = "1. What is Rust?\n2) Why is it fast?\n- How do I start?\n* Where next?";
        assert_eq!(
            parse(text, ""),
            ["What is Rust?", "Why is it fast?", "How do I start?"]
        );
        assert_eq!(
            parse(
                "• **Is it safe?**\n(2) \"What about async?\"\nQ3: Any books?",
                ""
            ),
            ["Is it safe?", "What about async?", "Any books?"]
        );
    }

    #[test]
    fn preambles_blanks_repeats_and_long_lines_are_dropped() {
        let long = format!("Why {}?", "very ".repeat(20));
        let text = format!(
            "Here are some questions you could ask:\n\n  \n1. Is it fast?\n2. is it   FAST?\n3. {long}\n4. Can I try it?"
        );
        assert_eq!(parse(&text, ""), ["Is it fast?", "Can I try it?"]);
    }

    #[test]
    fn questions_that_differ_only_by_an_article_are_one() {
        // SmolLM2-135M's suggestions after an answer about the moon (the app's E2E run).
        let text = "1. What's the moon's orbit around Earth?\n2. What's the moon's orbit around the Earth?\n3. What's the moon's orbit around the Sun?";
        assert_eq!(
            parse(text, "Tell me about the moon."),
            [
                "What's the moon's orbit around Earth?",
                "What's the moon's orbit around the Sun?"
            ]
        );
        // Only whole words are articles: "theatre" is not "the" + "atre".
        assert_eq!(
            parse("Is theatre art?\nIs atre art?\nIs another one due?", ""),
            ["Is theatre art?", "Is atre art?", "Is another one due?"]
        );
    }

    // The outputs below are SmolLM2-135M's own replies to INSTRUCTION (sampled at 0.3 and at
    // the default temperature), as the worker received them.

    #[test]
    fn a_preamble_and_a_closing_remark_around_the_list_are_dropped() {
        let text = "Here are three short questions I'd like you to ask me:\n\n1. What's the most \
            memorable scene in the play?\n2. How do you feel about the way I've portrayed Hamlet?\n\
            3. What's the most interesting fact about Hamlet?\n\nThese questions will help me \
            provide more specific and thoughtful answers to your questions.";
        assert_eq!(
            parse(text, "Who wrote Hamlet?"),
            [
                "What's the most memorable scene in the play?",
                "What's the most interesting fact about Hamlet?"
            ]
        );
    }

    #[test]
    fn statements_and_chatter_are_no_suggestions() {
        for text in [
            "The largest ocean is thought to be the world's deepest known place, the Mariana Trench.",
            "I'm ready to help. What would you like to ask next?",
            "What a wonderful topic! I'd love to delve into it.\n\nWhat a wonderful topic!",
            "Please go ahead.\n\nNow, I'm ready to explore the wonders of the ocean. You have the chance to",
            "### Step-by-Step Guide to Making a Perfect German Bread",
            "Feel free to ask the next follow-up question.\n\nShakespeare's original play\n\nWhich",
        ] {
            assert_eq!(parse(text, "What is it?"), Vec::<String>::new(), "{text:?}");
        }
    }

    #[test]
    fn the_users_question_and_echoes_of_the_instruction_are_dropped() {
        let text = "1. What is the largest ocean?\n2. What three short questions can I ask you \
            next about this?\n3. What's the largest ocean?\n4. How deep is it?";
        assert_eq!(
            parse(text, "What is the largest ocean?"),
            ["How deep is it?"]
        );
    }

    #[test]
    fn questions_put_to_the_assistant_about_itself_are_dropped() {
        // SmolLM2-135M's suggestions after "Name three colours." (the app's E2E run).
        let text = "1. What's the most exciting thing you've ever seen?\n2. Do YOU like red?\n\
            3. Which colours are your favourites?\n4. Can you name three more colours?\n\
            5. Could you explain why the sky is blue?";
        assert_eq!(
            parse(text, "Name three colours."),
            [
                "Can you name three more colours?",
                "Could you explain why the sky is blue?"
            ]
        );
        // A word that only starts like one ("young", "youth") is no second person.
        assert_eq!(
            parse("Are young stars hot?\nWhat is youth?", ""),
            ["Are young stars hot?", "What is youth?"]
        );
    }

    #[test]
    fn questions_and_answers_keep_only_the_questions() {
        let text = "Q: What's the biggest planet?\nA: Jupiter is.\nQuestion: \"Where is Paris?\"";
        assert_eq!(
            parse(text, ""),
            ["What's the biggest planet?", "Where is Paris?"]
        );
    }

    #[test]
    fn an_inline_numbered_list_is_split() {
        let text = "1. How does Rust work? 2. What are its benefits? 3. Is 3.5 or 4 faster?";
        assert_eq!(
            parse(text, "What is Rust?"),
            [
                "How does Rust work?",
                "What are its benefits?",
                "Is 3.5 or 4 faster?"
            ]
        );
    }

    #[test]
    fn requests_count_and_an_interjection_is_removed() {
        let text = "Sure, what about Lyon?\nTell me more about Lyon.\nLyon is nice.";
        assert_eq!(
            parse(text, ""),
            ["what about Lyon?", "Tell me more about Lyon."]
        );
    }

    #[test]
    fn nothing_usable_is_no_suggestion() {
        assert!(parse("", "").is_empty());
        assert!(parse("\n - \n1.\nQuestions:", "").is_empty());
    }

    #[test]
    fn a_number_that_is_part_of_the_question_stays() {
        assert_eq!(
            parse("2024 was a leap year?", ""),
            ["2024 was a leap year?"]
        );
        assert_eq!(parse("1. 3.5 or 4?", ""), ["3.5 or 4?"]);
    }

    #[test]
    fn the_setting_is_validated() {
        assert!(FollowUpSettings::default().validate().is_ok());
        let err = FollowUpSettings {
            max_tokens: 4,
            ..FollowUpSettings::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("follow_ups.max_tokens"), "{err}");
    }
}

/// Follow-ups through the real chat app with the model's output scripted at the engine's token
/// boundary (the template, the worker, the core are the real ones).
#[cfg(test)]
pub(crate) mod app_tests {
    use super::*;
    use crate::events::AppEvent;
    use crate::scripted_app::{self, pieces, wait, ScriptedApp};
    use crate::{SendOutcome, Settings};

    /// The scripted app, with the follow-ups' own ways to ask and wait.
    pub(crate) struct Harness(ScriptedApp);

    impl std::ops::Deref for Harness {
        type Target = ScriptedApp;
        fn deref(&self) -> &ScriptedApp {
            &self.0
        }
    }

    pub(crate) fn harness(replies: &[&str], follow_ups: FollowUpSettings) -> Harness {
        let settings = Settings {
            follow_ups,
            ..Settings::default()
        };
        // Each reply in pieces of three characters, as tokens arrive.
        let replies = replies.iter().map(|r| pieces(r, 3)).collect();
        Harness(scripted_app::open(settings, replies))
    }

    impl Harness {
        /// Sends `text`; returns once the answer is stored and the worker is idle (after its
        /// follow-ups, if any).
        pub fn ask(&self, chat_id: ChatId, text: &str) -> MessageId {
            let SendOutcome::Generating {
                assistant_message_id: id,
                ..
            } = self.app.send(chat_id, text).unwrap()
            else {
                panic!("not an answer")
            };
            self.wait_idle(chat_id);
            id
        }

        /// Waits until the chat's answer is stored and the worker is idle.
        pub fn wait_idle(&self, chat_id: ChatId) {
            wait(|| {
                let idle = !self.app.chat(chat_id).unwrap().busy
                    && self.app.inner.worker.status().queued == 0;
                idle.then_some(())
            });
        }

        fn changes(&self, chat_id: ChatId) -> usize {
            let events = self.events.lock().unwrap();
            events
                .iter()
                .filter(|e| matches!(e, AppEvent::FollowUpsChanged { chat_id: c } if *c == chat_id))
                .count()
        }
    }

    #[test]
    fn suggestions_follow_the_answer_on_its_own_prompt_and_go_when_the_user_sends() {
        let h = harness(
            &[
                "Paris is the capital of France.",
                "Here are some ideas:\n1. What is the capital of France?\n2. What about Lyon?\n3. How old is Paris?\n4. What about lyon?\n",
                "Lyon is in the south-east.",
            ],
            FollowUpSettings::default(),
        );
        let chat = h.app.create_chat().unwrap();
        let answer = h.ask(chat.id, "What is the capital of France?");
        let f = h.app.follow_ups(chat.id).expect("follow-ups");
        assert_eq!((f.chat_id, f.message_id), (chat.id, answer));
        assert_eq!(f.questions, ["What about Lyon?", "How old is Paris?"]);
        assert_eq!(h.changes(chat.id), 1);
        let prompts = h.prompts.lock().unwrap().clone();
        assert_eq!(prompts.len(), 2);
        // The suggestions' prompt continues the answer's: the conversation, the answer, then
        // the instruction as the user's turn.
        let (answer_prompt, follow_prompt) = (&prompts[0], &prompts[1]);
        assert!(
            follow_prompt.starts_with(answer_prompt.as_str()),
            "{answer_prompt:?}\n{follow_prompt:?}"
        );
        let rest = &follow_prompt[answer_prompt.len()..];
        assert!(rest.contains("Paris is the capital of France."), "{rest}");
        assert!(rest.contains(INSTRUCTION), "{rest}");
        // Not stored as messages.
        assert_eq!(h.app.chat(chat.id).unwrap().messages.len(), 2);

        // Sending takes them away at once; the next answer gets its own.
        h.app.send(chat.id, "And Lyon?").unwrap();
        assert!(h.app.follow_ups(chat.id).is_none());
        assert!(h.changes(chat.id) >= 2);
        wait(|| (h.app.inner.worker.status().queued == 0).then_some(()));
        // The script has no reply left for the second answer's suggestions: a failed generation
        // shows none, and says nothing to the chat.
        assert!(h.app.follow_ups(chat.id).is_none());
    }

    #[test]
    fn typing_dismisses_them() {
        let h = harness(&["Yes.", "Why is it?"], FollowUpSettings::default());
        let chat = h.app.create_chat().unwrap();
        h.ask(chat.id, "Is it?");
        assert_eq!(h.app.follow_ups(chat.id).unwrap().questions, ["Why is it?"]);
        assert!(h.app.dismiss_follow_ups(chat.id));
        assert!(h.app.follow_ups(chat.id).is_none());
        assert_eq!(h.changes(chat.id), 2);
        assert!(
            !h.app.dismiss_follow_ups(chat.id),
            "nothing left to dismiss"
        );
    }

    #[test]
    fn with_the_setting_off_none_are_generated() {
        let off = FollowUpSettings {
            enabled: false,
            ..FollowUpSettings::default()
        };
        let h = harness(&["Yes.", "1. Why?"], off);
        let chat = h.app.create_chat().unwrap();
        h.ask(chat.id, "Is it?");
        assert_eq!(h.prompts.lock().unwrap().len(), 1, "no second generation");
        assert!(h.app.follow_ups(chat.id).is_none());
        assert_eq!(h.changes(chat.id), 0);
    }
}
