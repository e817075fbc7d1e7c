//! Many connections at once. Thread counts are read from /proc/self, so run these under
//! cargo-nextest (one process per test), as README's test command does.

use std::time::Duration;

use serde_json::json;

use crate::support::{TestServer, WsClient, eventually, unique_topic};
use phx_threads::process::thread_count;

#[test]
fn a_thousand_joined_connections_all_receive_a_broadcast_and_threads_return_to_idle() {
    let server = TestServer::start();
    let idle = thread_count().expect("/proc/self/status");
    let topic = unique_topic("room");
    let mut clients: Vec<WsClient> = (0..1000)
        .map(|i| {
            let mut c = WsClient::connect(server.addr(), "vsn=2.0.0")
                .unwrap_or_else(|e| panic!("connection {i}: {e} (is `ulimit -n` at least 4096?)"));
            c.join_ok(&topic);
            c
        })
        .collect();
    // A socket thread and one channel thread per joined connection; the writers are a fixed
    // pool, and a flusher exists only while a client is behind. The broadcast below reaches
    // 1,000 subscribers, so it also goes through the writers (`Config::spread_fanout`).
    let busy = thread_count().unwrap();
    assert!(
        (idle + 2000..idle + 2050).contains(&busy),
        "expected 2 threads per joined connection: idle {idle}, busy {busy}"
    );
    server
        .handle()
        .pubsub()
        .broadcast(&topic, "new_msg", json!({"body": "to all"}).into())
        .unwrap();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = c.expect(|m| m[3] == "new_msg");
        assert_eq!(msg, json!([null, null, topic, "new_msg", {"body": "to all"}]), "client {i}");
    }
    for c in clients.drain(..) {
        c.close();
    }
    let back = eventually(Duration::from_secs(20), || thread_count() == Some(idle));
    assert!(back, "threads did not return to {idle}: now {:?}", thread_count());
    assert_eq!(server.handle().connection_count(), 0);
}
