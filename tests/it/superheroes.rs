//! `superheroes:lobby` end to end: real PostgreSQL, the NOTIFY listener, PubSub, the channel,
//! and WebSocket clients applying the seed's client logic (replace on hydrate, upsert on
//! create/update, remove on delete).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::support::pg::TestDb;
use crate::support::{TestServer, WsClient, test_config};
use phx_threads::app::{self, lobby::Lobby, superheroes_channel};
use phx_threads::server;
use phx_threads::store::listener::spawn_listener;
use phx_threads::store::superheroes::{self, SuperheroParams};

/// The seed's React logic, as a fold over pushes.
pub(crate) fn apply(state: &mut BTreeMap<i64, Value>, msg: &Value) {
    let payload = &msg[4];
    match msg[3].as_str().unwrap() {
        "hydrate" => {
            state.clear();
            for h in payload["superheroes"].as_array().unwrap() {
                state.insert(h["id"].as_i64().unwrap(), h.clone());
            }
        }
        "create" | "update" => {
            let h = &payload["superhero"];
            state.insert(h["id"].as_i64().unwrap(), h.clone());
        }
        "delete" => {
            state.remove(&payload["superhero"]["id"].as_i64().unwrap());
        }
        _ => {}
    }
}

#[test]
fn fifty_concurrent_updates_leave_every_client_with_the_database_rows() {
    let db = TestDb::new();
    let store = db.store();
    let lobby = Lobby::new(store.clone());
    let server =
        TestServer::with(test_config(), app::router(Some(lobby.clone())), server::accept_all());
    let pubsub = server.handle().pubsub();
    let _listener = spawn_listener(&store.config().url, move |e| {
        superheroes_channel::publish_store_event(&lobby, &pubsub, e)
    })
    .unwrap();
    let params = |name: &str| SuperheroParams {
        name: Some(name.into()),
        location: Some("L".into()),
        power: Some("P".into()),
    };
    let hero = superheroes::create(&mut *store.client().unwrap(), &params("Contested")).unwrap();

    let mut clients: Vec<(WsClient, BTreeMap<i64, Value>)> = (0..3)
        .map(|_| {
            let mut c = WsClient::connect(server.addr(), "vsn=2.0.0").unwrap();
            c.join_ok("superheroes:lobby");
            let mut state = BTreeMap::new();
            apply(&mut state, &c.expect(|m| m[3] == "hydrate"));
            (c, state)
        })
        .collect();

    let writers: Vec<_> = (0..5)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let p = SuperheroParams {
                        location: Some(format!("writer {t} step {i}")),
                        ..Default::default()
                    };
                    superheroes::update(&mut *store.client().unwrap(), hero.id, &p).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let last = superheroes::get(&mut *store.client().unwrap(), hero.id).unwrap();
    assert_eq!(last.version, 51);
    // A marker change committed after all updates: once a client has seen it, it has seen
    // every earlier change that was pushed to it.
    let marker = superheroes::create(&mut *store.client().unwrap(), &params("Marker")).unwrap();
    let expected: BTreeMap<i64, Value> = superheroes::list(&mut *store.client().unwrap())
        .unwrap()
        .into_iter()
        .map(|h| (h.id, serde_json::to_value(&h).unwrap()))
        .collect();
    for (c, state) in &mut clients {
        loop {
            let msg = c.expect(|m| m[4].get("message_id").is_some());
            apply(state, &msg);
            if msg[4]["superhero"]["id"] == json!(marker.id) {
                break;
            }
        }
        assert_eq!(*state, expected);
    }
}

/// Inserts `n` rows in one statement (no change events: nobody listens in these tests).
pub(crate) fn insert_rows(store: &phx_threads::store::Store, n: i64, name: &str, power: &str) {
    let sql = "INSERT INTO superheroes (name, location, power)
               SELECT $1 || ' ' || i, $1, $2 FROM generate_series(1, $3::bigint) AS i";
    store.client().unwrap().execute(sql, &[&name, &power, &n]).unwrap();
}

#[test]
fn the_table_is_bounded_with_a_422_and_the_index_never_truncates() {
    use crate::support::http::TestServer as HttpServer;
    use phx_threads::store::{Store, StoreConfig};
    let db = TestDb::new();
    let max = 10_005;
    let store =
        Store::connect(StoreConfig { max_superheroes: max, ..StoreConfig::new(&db.url) }).unwrap();
    insert_rows(&store, max as i64, "Bulk", "P");
    let http = HttpServer::start(Some(store));

    // Before: 10,000 rows, and nothing said the other five were missing.
    let index = http.get("/api/superheroes");
    assert_eq!(index.status, 200);
    assert_eq!(index.json()["data"].as_array().unwrap().len(), max);

    let body = json!({"superhero": {"name": "One more", "location": "L", "power": "P"}});
    let refused = http.send("POST", "/api/superheroes", &body.to_string());
    assert_eq!(refused.status, 422, "{}", refused.text());
    let errors = &refused.json()["errors"]["superheroes"];
    assert_eq!(errors[0], format!("limit of {max} reached; delete some first"), "{errors}");

    let last = index.json()["data"][max - 1]["id"].clone();
    assert_eq!(http.send("DELETE", &format!("/api/superheroes/{last}"), "").status, 204);
    assert_eq!(http.send("POST", "/api/superheroes", &body.to_string()).status, 201);
}
