//! Asking the user before a tool runs: tools that are not read-only (every MCP tool the user
//! has not marked trusted) wait for Allow once / Always for this tool / Deny.
//!
//! The worker waits in [`Approvals::wait`] (a pending call is a [`super::ToolStatus::Pending`]
//! record, shown as a card with the three buttons); the user's answer arrives through
//! [`crate::ChatApp::decide_tool`], which records "Always" in the settings first. Stopping the
//! answer ends the wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::MessageId;

/// The user's answer to "run this tool?".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Run this call.
    Once,
    /// Run this call, and from now on this tool without asking (recorded as trusted).
    Always,
    /// Do not run it: the model is told the user declined.
    Deny,
}

impl std::str::FromStr for Decision {
    type Err = crate::ChatError;

    fn from_str(s: &str) -> crate::Result<Decision> {
        match s {
            "once" => Ok(Decision::Once),
            "always" => Ok(Decision::Always),
            "deny" => Ok(Decision::Deny),
            other => Err(crate::ChatError::Invalid(format!(
                "“{other}” is not an answer to a tool's approval (once, always or deny)"
            ))),
        }
    }
}

/// What the result of a declined call says, to the model and on the card.
pub const DECLINED: &str = "the user declined to run this tool";

/// How often a waiting call looks whether its answer was stopped.
const STOP_POLL: Duration = Duration::from_millis(50);

/// The calls waiting for the user, by answer and call index.
#[derive(Default)]
pub struct Approvals {
    waiting: Mutex<HashMap<(MessageId, usize), Waiting>>,
}

struct Waiting {
    /// The tool's name as the model called it.
    name: String,
    reply: mpsc::Sender<Decision>,
}

impl Approvals {
    /// Waits for the user's decision on call `index` of `answer`; `None` when the answer is
    /// stopped first.
    pub(crate) fn wait(
        &self,
        answer: MessageId,
        index: usize,
        name: &str,
        cancelled: &AtomicBool,
    ) -> Option<Decision> {
        let (reply, decision) = mpsc::channel();
        let name = name.to_owned();
        self.waiting
            .lock()
            .unwrap()
            .insert((answer, index), Waiting { name, reply });
        let outcome = loop {
            if cancelled.load(Ordering::SeqCst) {
                break None;
            }
            match decision.recv_timeout(STOP_POLL) {
                Ok(d) => break Some(d),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            }
        };
        self.waiting.lock().unwrap().remove(&(answer, index));
        outcome
    }

    /// The name of the tool call `index` of `answer` waits to run, if it waits.
    pub(crate) fn waiting(&self, answer: MessageId, index: usize) -> Option<String> {
        let waiting = self.waiting.lock().unwrap();
        waiting.get(&(answer, index)).map(|w| w.name.clone())
    }

    /// Hands `decision` to the waiting call; `false` when none waits (any more).
    pub(crate) fn decide(&self, answer: MessageId, index: usize, decision: Decision) -> bool {
        let waiting = self.waiting.lock().unwrap();
        waiting
            .get(&(answer, index))
            .is_some_and(|w| w.reply.send(decision).is_ok())
    }
}
