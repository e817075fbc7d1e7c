//! Per-connection rate limits (issue #14): a burst the official client may send passes, messages
//! and joins over budget get `{"reason":"rate limited"}` on their ref, and a client that keeps
//! going regardless is closed with 1008. Real sockets, the chat application.

use serde_json::{Value, json};

use crate::support::{TestServer, WAIT, WsClient, test_config, unique_topic};
use phx_threads::{Config, server};

fn server_with(config: Config) -> TestServer {
    TestServer::with(config, phx_threads::app::router(None), server::accept_all())
}

fn rate_limited(reply: &Value) -> bool {
    *reply == json!({"status": "error", "response": {"reason": "rate limited"}})
}

#[test]
fn a_burst_of_30_pushes_passes_with_the_default_limits() {
    let server = TestServer::start();
    let mut c = server.client();
    let topic = unique_topic("room");
    let jr = c.join_ok(&topic);
    let refs: Vec<String> = (0..30)
        .map(|i| c.push(Some(&jr), &topic, "new_msg", json!({ "body": format!("m{i}") })))
        .collect();
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(c.reply_to(r)["status"], "ok", "push {i}");
    }
    for i in 0..30 {
        let body = format!("m{i}");
        c.expect(|m| m[3] == "new_msg" && m[4]["body"] == body.as_str());
    }
}

#[test]
fn messages_over_budget_are_refused_then_the_client_is_closed_with_1008() {
    let config =
        Config { messages_per_sec: 1, message_burst: 5, max_rate_refusals: 3, ..test_config() };
    let server = server_with(config);
    let mut c = server.client();
    for i in 0..5 {
        assert_eq!(c.heartbeat()[4]["status"], "ok", "heartbeat {i} is within the burst");
    }
    for i in 0..3 {
        let refused = c.heartbeat();
        assert!(rate_limited(&refused[4]), "heartbeat {} over budget: {refused}", 5 + i);
    }
    c.send(json!([null, "x", "phoenix", "heartbeat", {}]));
    assert_eq!(c.expect_close(WAIT), Some(1008));
    // Only that client pays: a fresh connection has its own budget.
    let mut fresh = server.client();
    assert_eq!(fresh.heartbeat()[4]["status"], "ok");
    // Every refusal is counted, and /metrics exports the counts (one test per process).
    let metrics = phx_threads::metrics::render();
    assert!(metrics.contains("phx_limit_refusals_total{kind=\"rate_limited\"} 3\n"), "{metrics}");
    assert!(metrics.contains("phx_limit_refusals_total{kind=\"rate_limit_closes\"} 1\n"));
}

#[test]
fn joins_over_budget_are_refused_while_other_messages_pass() {
    let config = Config { joins_per_sec: 1, join_burst: 2, ..test_config() };
    let server = server_with(config);
    let mut c = server.client();
    c.join_ok(&unique_topic("room"));
    c.join_ok(&unique_topic("room"));
    let (_, refused) = c.join(&unique_topic("room"), json!({}));
    assert!(rate_limited(&refused), "third join: {refused}");
    assert_eq!(c.heartbeat()[4]["status"], "ok");
}

#[test]
fn a_connection_with_limits_off_is_never_refused() {
    let config = Config { messages_per_sec: 0, joins_per_sec: 0, ..test_config() };
    let server = server_with(config);
    let mut c: WsClient = server.client();
    for i in 0..500 {
        assert_eq!(c.heartbeat()[4]["status"], "ok", "heartbeat {i}");
    }
}
