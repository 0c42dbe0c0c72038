//! Which conversation a request continues, for clients that send neither a
//! `prompt_cache_key` nor a `previous_response_id`: a chat client that
//! replays its whole history each turn. A request whose messages start
//! with all of an earlier request's messages (and add more) continues that
//! request's conversation; the console groups its agent sessions by it.
//!
//! Only fingerprints are kept (a running hash per request, not the text),
//! per client, and a bounded number of them: the oldest are forgotten.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::engine::{ChatMessage, Role};

/// Conversation ends remembered (all clients together); past this the
/// oldest are forgotten and their next turn starts a new conversation.
const REMEMBERED: usize = 4096;

/// The conversations seen lately: the fingerprint of each request's whole
/// input (its client's included), and the conversation (its first
/// request's id) it belongs to.
#[derive(Debug, Default)]
pub struct Conversations {
    by_end: HashMap<u64, String>,
    order: VecDeque<u64>,
}

impl Conversations {
    /// The conversation of request `request_id` from `client` with
    /// `messages`: the conversation of the latest earlier request whose
    /// messages this one's begin with, else its own id. Remembers this
    /// request's messages as a conversation end.
    pub fn join(&mut self, client: &str, messages: &[ChatMessage], request_id: &str) -> String {
        let prefixes = fingerprints(client, messages);
        // The longest earlier input this one extends (not one equal to it:
        // the same question asked again is a new conversation).
        let found = prefixes
            .iter()
            .rev()
            .skip(1)
            .find_map(|h| self.by_end.get(h).cloned());
        let conversation = found.unwrap_or_else(|| request_id.to_owned());
        if let Some(&end) = prefixes.last() {
            if self.by_end.insert(end, conversation.clone()).is_none() {
                self.order.push_back(end);
            }
            while self.order.len() > REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.by_end.remove(&old);
                }
            }
        }
        conversation
    }
}

/// A running hash after each message, started from the client's name (so
/// clients never share a conversation). What a client may change when it
/// replays a turn is left out: an assistant message counts by its text
/// only (tool-call ids and argument formatting vary between clients;
/// reasoning is often dropped).
fn fingerprints(client: &str, messages: &[ChatMessage]) -> Vec<u64> {
    let mut hasher = DefaultHasher::new();
    client.hash(&mut hasher);
    messages
        .iter()
        .map(|m| {
            std::mem::discriminant(&m.role).hash(&mut hasher);
            let text = m.content.as_ref().map(|c| c.text()).unwrap_or_default();
            text.trim().hash(&mut hasher);
            if m.role == Role::Tool {
                m.tool_call_id.hash(&mut hasher);
            }
            // A separator, so ["ab"] and ["a", "b"] differ.
            0xffu8.hash(&mut hasher);
            hasher.finish()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Content;

    fn msg(role: Role, text: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: Some(Content::Text(text.into())),
            ..Default::default()
        }
    }

    #[test]
    fn a_request_that_extends_an_earlier_one_joins_its_conversation() {
        let mut c = Conversations::default();
        let first = vec![msg(Role::System, "be brief"), msg(Role::User, "hi")];
        assert_eq!(c.join("vm", &first, "r1"), "r1");
        let mut second = first.clone();
        second.push(msg(Role::Assistant, "hello "));
        second.push(msg(Role::User, "list files"));
        assert_eq!(c.join("vm", &second, "r2"), "r1");
        let mut third = second.clone();
        third.push(msg(Role::Assistant, "done"));
        third.push(msg(Role::User, "thanks"));
        assert_eq!(c.join("vm", &third, "r3"), "r1", "the chain carries on");

        // The same opening again, another client, another question: new.
        assert_eq!(c.join("vm", &first, "r4"), "r4");
        assert_eq!(c.join("other", &second, "r5"), "r5");
        let elsewhere = vec![msg(Role::System, "be brief"), msg(Role::User, "bye")];
        assert_eq!(c.join("vm", &elsewhere, "r6"), "r6");
        // Message boundaries count.
        let joined = fingerprints("vm", &[msg(Role::User, "ab")]);
        let split = fingerprints("vm", &[msg(Role::User, "a"), msg(Role::User, "b")]);
        assert_ne!(joined.last(), split.last());
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_are_forgotten() {
        let mut c = Conversations::default();
        for i in 0..REMEMBERED + 10 {
            c.join("vm", &[msg(Role::User, &i.to_string())], &format!("r{i}"));
        }
        assert_eq!(c.by_end.len(), REMEMBERED);
        assert_eq!(c.order.len(), REMEMBERED);
        let extends_oldest = [msg(Role::User, "0"), msg(Role::User, "more")];
        assert_eq!(c.join("vm", &extends_oldest, "late"), "late");
        let extends_newest = [
            msg(Role::User, &(REMEMBERED + 9).to_string()),
            msg(Role::User, "more"),
        ];
        assert_eq!(
            c.join("vm", &extends_newest, "later"),
            format!("r{}", REMEMBERED + 9)
        );
    }
}
