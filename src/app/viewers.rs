//! Who is viewing the superheroes roster: the lobby channel wrapped so that every join tracks
//! the viewer in presence (the React client sends a per-tab `viewer_id` in the join params)
//! and pushes `presence_state`. A wrapper rather than code in the lobby channel, so the two
//! concerns change independently.

use serde_json::Value;

use crate::channel::{Channel, ChannelCtx, Flow, HandleIn, Info, JoinResult, StopReason};
use crate::presence::Presence;
use crate::protocol::Payload;

/// Longest `viewer_id` kept; longer or missing ids are replaced by a generated one.
const MAX_VIEWER_ID: usize = 64;

/// `inner`, plus presence tracking of its viewers.
pub struct Viewed<C> {
    inner: C,
    presence: Presence,
}

impl<C: Channel> Viewed<C> {
    pub fn new(inner: C, presence: Presence) -> Viewed<C> {
        Viewed { inner, presence }
    }
}

impl<C: Channel> Channel for Viewed<C> {
    fn join(&mut self, topic: &str, payload: Payload, ctx: &mut ChannelCtx) -> JoinResult {
        let viewer = viewer_id(&payload);
        let reply = self.inner.join(topic, payload, ctx)?;
        super::track_and_push_state(&self.presence, ctx, &viewer)?;
        Ok(reply)
    }

    fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelCtx) -> HandleIn {
        self.inner.handle_in(event, payload, ctx)
    }

    fn intercepts(&self) -> Vec<String> {
        self.inner.intercepts()
    }

    fn handle_out(&mut self, event: &str, payload: Payload, ctx: &mut ChannelCtx) -> Flow {
        self.inner.handle_out(event, payload, ctx)
    }

    fn handle_info(&mut self, info: Info, ctx: &mut ChannelCtx) -> Flow {
        self.inner.handle_info(info, ctx)
    }

    // Every trait method is forwarded: a default here would silently replace the lobby's own
    // (its catch-up on lag is what keeps a slow client's table exact).
    fn handle_lagged(&mut self, topic: &str, ctx: &mut ChannelCtx) -> Flow {
        self.inner.handle_lagged(topic, ctx)
    }

    fn terminate(&mut self, reason: &StopReason, ctx: &mut ChannelCtx) {
        self.inner.terminate(reason, ctx)
    }
}

fn viewer_id(payload: &Payload) -> String {
    match payload.as_json().and_then(|p| p.get("viewer_id")) {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_VIEWER_ID => id.clone(),
        _ => format!("viewer-{}", uuid::Uuid::new_v4()),
    }
}
