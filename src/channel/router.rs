//! Topic patterns → channel constructors (`channel "room:*", RoomChannel` in a Phoenix socket).

use std::sync::Arc;

use super::Channel;

type Factory = Arc<dyn Fn() -> Box<dyn Channel> + Send + Sync>;

/// Routes a topic to the first matching route, in declaration order. A pattern is an exact
/// topic, or a prefix followed by `*` (`"room:*"` matches `room:` followed by anything).
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(String, Factory)>,
    /// The presence tracker the server starts and stops with itself (`Router::presence`).
    presence: Option<crate::presence::Presence>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds a route.
    ///
    /// # Panics
    /// If `*` appears anywhere but at the end of `pattern` (a programming error, as in Phoenix).
    pub fn channel<F, C>(mut self, pattern: &str, factory: F) -> Router
    where
        F: Fn() -> C + Send + Sync + 'static,
        C: Channel,
    {
        let star = pattern.find('*');
        assert!(
            star.is_none() || star == Some(pattern.len() - 1),
            "topic pattern {pattern:?}: `*` is only allowed at the end"
        );
        crate::metrics::register_pattern(pattern);
        self.routes.push((pattern.to_string(), Arc::new(move || Box::new(factory()))));
        self
    }

    /// Mounts a presence handle: the server runs its tracker for as long as it runs.
    pub fn presence(mut self, presence: crate::presence::Presence) -> Router {
        self.presence = Some(presence);
        self
    }

    /// The mounted presence handle, to share with further channels.
    pub fn presence_handle(&self) -> Option<&crate::presence::Presence> {
        self.presence.as_ref()
    }

    /// A fresh channel for `topic`, or `None` ("unmatched topic").
    pub fn route(&self, topic: &str) -> Option<Box<dyn Channel>> {
        let (_, factory) = self.routes.iter().find(|(pattern, _)| matches(pattern, topic))?;
        Some(factory())
    }
}

fn matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns() {
        for (pattern, topic, expected) in [
            ("room:*", "room:lobby", true),
            ("room:*", "room:", true),
            ("room:*", "rooms:1", false),
            ("superheroes:lobby", "superheroes:lobby", true),
            ("superheroes:lobby", "superheroes:lobby2", false),
            ("*", "anything", true),
        ] {
            assert_eq!(super::matches(pattern, topic), expected, "{pattern} {topic}");
        }
    }
}
