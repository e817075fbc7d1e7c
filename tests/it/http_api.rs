//! The REST API over real sockets against a real (per-test) database.

use std::collections::BTreeSet;

use phx_threads::http::HttpConfig;
use phx_threads::http::router::routes;
use phx_threads::store::listener::StoreEvent;
use phx_threads::store::{Store, StoreConfig};
use serde_json::{Value, json};

use crate::support::http::{Response, TestServer};
use crate::support::pg::{TestDb, private_cluster};
use crate::support::{TempDir, listening, recv};

fn server() -> (TestDb, TestServer) {
    let db = TestDb::new();
    let server = TestServer::start(Some(db.store()));
    (db, server)
}

fn create(server: &TestServer, name: &str) -> Value {
    let body = json!({"superhero": {"name": name, "location": "Gotham", "power": "Money"}});
    let response = server.send("POST", "/api/superheroes", &body.to_string());
    assert_eq!(response.status, 201, "{}", response.text());
    response.json()["data"].clone()
}

/// Asserts status and JSON body of one request.
fn check(
    server: &TestServer,
    method: &str,
    path: &str,
    body: Option<&str>,
    status: u16,
    expected: Value,
) {
    let response = match body {
        Some(body) => server.send(method, path, body),
        None => server.request(method, path, &[], None),
    };
    assert_eq!((response.status, response.json()), (status, expected), "{method} {path} {body:?}");
    // CORS is off by default: same-origin clients need no header.
    assert_eq!(response.header("access-control-allow-origin"), None);
    assert_eq!(response.header("content-type"), Some("application/json; charset=utf-8"));
}

fn is_micros_rfc3339(value: &Value) -> bool {
    let text = value.as_str().unwrap_or("");
    let bytes = text.as_bytes();
    text.len() == 27
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
        && bytes[19] == b'.'
        && bytes[20..26].iter().all(u8::is_ascii_digit)
        && text.ends_with('Z')
}

#[test]
fn crud_round_trip() {
    let (_db, server) = server();
    let body =
        r#"{"superhero":{"name":"Batman","location":"Gotham","power":"Money","id":99,"x":1}}"#;
    let created = server.send("POST", "/api/superheroes", body);
    assert_eq!(created.status, 201);
    let hero = created.json()["data"].clone();
    let id = hero["id"].as_i64().unwrap();
    assert_eq!(created.header("location"), Some(format!("/api/superheroes/{id}").as_str()));
    assert_eq!((hero["name"].as_str(), hero["version"].as_i64()), (Some("Batman"), Some(1)));
    assert!(is_micros_rfc3339(&hero["inserted_at"]) && hero["inserted_at"] == hero["updated_at"]);

    let path = format!("/api/superheroes/{id}");
    assert_eq!(server.get(&path).json(), json!({"data": hero}));
    assert_eq!(server.get("/api/superheroes").json(), json!({"data": [hero]}));

    let put =
        server.send("PUT", &path, r#"{"superhero":{"power":"Detective"}}"#).json()["data"].clone();
    assert_eq!(
        (put["name"].as_str(), put["power"].as_str(), put["version"].as_i64()),
        (Some("Batman"), Some("Detective"), Some(2))
    );
    let patch =
        server.send("PATCH", &path, r#"{"superhero":{"name":"Bruce"}}"#).json()["data"].clone();
    assert_eq!(
        (patch["name"].as_str(), patch["power"].as_str(), patch["version"].as_i64()),
        (Some("Bruce"), Some("Detective"), Some(3))
    );
    assert!(patch["updated_at"].as_str() > put["updated_at"].as_str());
    assert_eq!(patch["inserted_at"], hero["inserted_at"]);

    let deleted = server.request("DELETE", &path, &[], None);
    assert_eq!((deleted.status, deleted.body.len()), (204, 0));
    assert_eq!(deleted.header("access-control-allow-origin"), None);
    check(&server, "GET", &path, None, 404, json!({"errors": {"detail": "Not Found"}}));
}

#[test]
fn list_is_ordered_by_id_and_empty_update_changes_nothing() {
    let (_db, server) = server();
    let ids: Vec<Value> =
        ["A", "B", "C"].iter().map(|n| create(&server, n)["id"].clone()).collect();
    let listed: Vec<Value> = server.get("/api/superheroes").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].clone())
        .collect();
    assert_eq!(listed, ids);
    let path = format!("/api/superheroes/{}", ids[0]);
    let before = server.get(&path).json();
    let after = server.send("PATCH", &path, r#"{"superhero":{}}"#).json();
    assert_eq!(before, after);
}

#[test]
fn validation_errors_are_422_in_ecto_style() {
    let (_db, server) = server();
    let long = "x".repeat(101);
    let cases: Vec<(String, Value)> = vec![
        (
            r#"{"superhero":{}}"#.into(),
            json!({"name": ["can't be blank"], "location": ["can't be blank"], "power": ["can't be blank"]}),
        ),
        (
            r#"{"superhero":{"name":"  ","location":"L","power":"P"}}"#.into(),
            json!({"name": ["can't be blank"]}),
        ),
        (
            r#"{"superhero":{"name":null,"location":"L","power":"P"}}"#.into(),
            json!({"name": ["can't be blank"]}),
        ),
        (
            format!(r#"{{"superhero":{{"name":"{long}","location":"L","power":"P"}}}}"#),
            json!({"name": ["should be at most 100 character(s)"]}),
        ),
        (
            format!(
                r#"{{"superhero":{{"name":"N","location":"{long}","power":"{}"}}}}"#,
                "p".repeat(201)
            ),
            json!({"location": ["should be at most 100 character(s)"], "power": ["should be at most 200 character(s)"]}),
        ),
        (
            r#"{"superhero":{"name":1,"location":["L"],"power":{"p":1}}}"#.into(),
            json!({"name": ["is invalid"], "location": ["is invalid"], "power": ["is invalid"]}),
        ),
        (
            r#"{"superhero":{"name":"a\u0000b","location":"L","power":"P"}}"#.into(),
            json!({"name": ["is invalid"]}),
        ),
    ];
    for (body, errors) in cases {
        check(&server, "POST", "/api/superheroes", Some(&body), 422, json!({"errors": errors}));
    }
    let id = create(&server, "Valid")["id"].clone();
    let path = format!("/api/superheroes/{id}");
    check(
        &server,
        "PATCH",
        &path,
        Some(r#"{"superhero":{"power":""}}"#),
        422,
        json!({"errors": {"power": ["can't be blank"]}}),
    );
    check(
        &server,
        "PUT",
        &path,
        Some(r#"{"superhero":{"name":false}}"#),
        422,
        json!({"errors": {"name": ["is invalid"]}}),
    );
}

#[test]
fn malformed_bodies_are_400() {
    let (_db, server) = server();
    let id = create(&server, "Target")["id"].clone();
    let item = format!("/api/superheroes/{id}");
    for (method, path) in
        [("POST", "/api/superheroes"), ("PUT", item.as_str()), ("PATCH", item.as_str())]
    {
        for body in [
            "{bad",
            "",
            "[]",
            r#"{"hero":{}}"#,
            r#"{"superhero":"Batman"}"#,
            r#"{"superhero":null}"#,
            "1e400",
        ] {
            let response = server.send(method, path, body);
            assert_eq!(response.status, 400, "{method} {body}");
            let detail = response.json()["errors"]["detail"].as_str().unwrap().to_owned();
            assert!(detail.starts_with("Bad Request: "), "{detail}");
        }
    }
}

/// serde_json stops at 128 levels; below that, recursion happens on the worker's small stack.
#[test]
fn deeply_nested_json_is_a_400_not_a_stack_overflow() {
    let (_db, server) = server();
    for depth in [100, 127, 128, 5000] {
        let body = format!(r#"{{"superhero":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        let response = server.send("POST", "/api/superheroes", &body);
        assert_eq!(response.status, 400, "depth {depth}");
        let nested = format!(
            r#"{{"superhero":{{"name":{}{}}}}}"#,
            "{\"a\":".repeat(depth),
            "}".repeat(depth)
        );
        let response = server.send("POST", "/api/superheroes", &nested);
        assert!(matches!(response.status, 400 | 422), "depth {depth}: {}", response.status);
    }
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn unknown_paths_and_ids_are_404() {
    let (_db, server) = server();
    let not_found = json!({"errors": {"detail": "Not Found"}});
    for path in [
        "/api",
        "/api/nope",
        "/api/superheroes/1/powers",
        "/api/superheroes/abc",
        "/api/superheroes/-1",
        "/api/superheroes/1.5",
        "/api/superheroes/99999999999999999999",
        "/api/superheroes/123456",
    ] {
        check(&server, "GET", path, None, 404, not_found.clone());
        check(&server, "DELETE", path, None, 404, not_found.clone());
    }
    let body = r#"{"superhero":{"name":"N"}}"#;
    check(&server, "PUT", "/api/superheroes/123456", Some(body), 404, not_found.clone());
    check(&server, "PATCH", "/api/superheroes/abc", Some(body), 404, not_found.clone());
    check(&server, "POST", "/nope", Some(body), 404, not_found);
}

#[test]
fn wrong_methods_are_405_with_allow() {
    let (_db, server) = server();
    let cases = [
        ("DELETE", "/api/superheroes", "GET, HEAD, POST, OPTIONS"),
        ("POST", "/api/superheroes/1", "GET, HEAD, PUT, PATCH, DELETE, OPTIONS"),
        ("POST", "/healthz", "GET, HEAD, OPTIONS"),
        ("TRACE", "/config.json", "GET, HEAD, OPTIONS"),
        ("QUERY", "/api/superheroes", "GET, HEAD, POST, OPTIONS"),
    ];
    for (method, path, allow) in cases {
        let response = server.request(method, path, &[], None);
        assert_eq!(response.status, 405, "{method} {path}");
        assert_eq!(response.header("allow"), Some(allow));
        assert_eq!(response.json(), json!({"errors": {"detail": "Method Not Allowed"}}));
    }
}

#[test]
fn oversized_bodies_are_413() {
    let (_db, server) = server();
    let too_large = json!({"errors": {"detail": "Request Entity Too Large"}});
    let body = format!(r#"{{"superhero":{{"name":"{}"}}}}"#, "x".repeat(70 * 1024));
    let response = server.send("POST", "/api/superheroes", &body);
    assert_eq!((response.status, response.json()), (413, too_large.clone()));

    // Chunked: no Content-Length to check first, so the cap while reading must catch it.
    let chunk = "x".repeat(40 * 1024);
    let mut raw = b"POST /api/superheroes HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..2 {
        raw.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let response = server.raw(&raw, false);
    assert_eq!((response.status, response.json()), (413, too_large.clone()));
}

/// Regression: tiny_http 0.12.0 allocated the declared Content-Length when discarding an
/// unread body, so this request aborted the process (see vendor/tiny_http/PATCHES.md).
#[test]
fn huge_declared_content_length_does_not_kill_the_server() {
    let (_db, server) = server();
    let raw = b"POST /api/superheroes HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100000000000000\r\n\r\n{}";
    let response = server.raw(raw, false);
    assert_eq!(response.status, 413);
    let raw = b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000000000\r\n\r\n";
    assert_eq!(server.raw(raw, false).status, 200);
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn non_json_content_type_is_415() {
    let (_db, server) = server();
    let body = br#"{"superhero":{"name":"N","location":"L","power":"P"}}"#;
    for content_type in
        ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
    {
        let response = server.request(
            "POST",
            "/api/superheroes",
            &[("Content-Type", content_type)],
            Some(body),
        );
        assert_eq!(
            (response.status, response.json()),
            (415, json!({"errors": {"detail": "Unsupported Media Type"}}))
        );
    }
    for content_type in
        ["application/json; charset=utf-8", "application/vnd.api+json", "APPLICATION/JSON"]
    {
        let response = server.request(
            "POST",
            "/api/superheroes",
            &[("Content-Type", content_type)],
            Some(body),
        );
        assert_eq!(response.status, 201, "{content_type}");
    }
    // No Content-Type at all: parsed as JSON.
    assert_eq!(server.request("POST", "/api/superheroes", &[], Some(body)).status, 201);
}

#[test]
fn cors_only_for_listed_origins() {
    let db = TestDb::new();
    let config =
        HttpConfig { cors_origins: vec!["http://localhost:5173".into()], ..HttpConfig::default() };
    let server = TestServer::with_config(config, Some(db.store()));
    let preflight = |origin: &str| {
        let headers = [
            ("Origin", origin),
            ("Access-Control-Request-Method", "PATCH"),
            ("Access-Control-Request-Headers", "content-type, x-evil"),
        ];
        server.request("OPTIONS", "/api/superheroes/1", &headers, None)
    };
    let listed = preflight("http://localhost:5173");
    assert_eq!(listed.status, 204);
    assert_eq!(listed.header("access-control-allow-origin"), Some("http://localhost:5173"));
    assert_eq!(
        listed.header("access-control-allow-methods"),
        Some("GET, HEAD, PUT, PATCH, DELETE, OPTIONS")
    );
    // Only the header the API reads; the browser refuses the call that wanted x-evil.
    assert_eq!(listed.header("access-control-allow-headers"), Some("content-type"));
    assert_eq!(listed.header("access-control-max-age"), Some("600"));
    assert_eq!(listed.header("vary"), Some("Origin"));
    let other = preflight("https://evil.example");
    assert_eq!(other.status, 204);
    assert_eq!(other.header("access-control-allow-origin"), None);
    assert_eq!(other.header("access-control-allow-methods"), None);
    assert_eq!(server.request("OPTIONS", "/api/unknown", &[], None).status, 404);
    let get = |origin| server.request("GET", "/api/superheroes", &[("Origin", origin)], None);
    assert_eq!(
        get("http://localhost:5173").header("access-control-allow-origin"),
        Some("http://localhost:5173")
    );
    assert_eq!(
        get("http://localhost:5173").header("access-control-expose-headers"),
        Some("Location")
    );
    assert_eq!(get("https://evil.example").header("access-control-allow-origin"), None);
    assert_eq!(get("null").header("access-control-allow-origin"), None);
}

#[test]
fn head_is_get_without_body() {
    let (_db, server) = server();
    create(&server, "Head");
    let get = server.get("/api/superheroes");
    let head = server.request("HEAD", "/api/superheroes", &[], None);
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), Some(get.body.len().to_string().as_str()));
}

#[test]
fn healthz_and_config_json() {
    let (_db, server) = server();
    assert_eq!(server.get("/healthz").json(), json!({"status": "ok", "database": "up"}));
    let config = server.request("GET", "/config.json", &[], None).json();
    assert_eq!(config, json!({"socket_url": "ws://127.0.0.1:4080/socket", "api_url": ""}));
    let response = server.raw(
        b"GET /config.json HTTP/1.1\r\nHost: heroes.example:4001\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_eq!(response.json()["socket_url"], "ws://heroes.example:4080/socket");

    let public = HttpConfig {
        public_ws_url: Some("wss://heroes.example/socket".into()),
        ..HttpConfig::default()
    };
    let server = TestServer::with_config(public, None);
    assert_eq!(server.get("/config.json").json()["socket_url"], "wss://heroes.example/socket");
}

#[test]
fn without_a_store_the_api_is_503() {
    let server = TestServer::start(None);
    let unavailable = json!({"errors": {"detail": "Service Unavailable"}});
    check(&server, "GET", "/api/superheroes", None, 503, unavailable.clone());
    check(
        &server,
        "POST",
        "/api/superheroes",
        Some(r#"{"superhero":{"name":"N","location":"L","power":"P"}}"#),
        503,
        unavailable.clone(),
    );
    check(&server, "DELETE", "/api/superheroes/1", None, 503, unavailable);
    assert_eq!(server.get("/healthz").json(), json!({"status": "ok", "database": "down"}));
}

#[test]
fn root_without_a_client_explains_how_to_build_it() {
    let server = TestServer::start(None);
    let response = server.get("/");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(response.text().contains("npm --prefix superheroes-react run build"));
    assert_eq!(server.get("/some/page").status, 404);
}

#[test]
fn static_client_files_and_fallback() {
    let dir = TempDir::new("phx-it-static");
    std::fs::create_dir_all(dir.path().join("assets")).unwrap();
    std::fs::write(dir.path().join("index.html"), "<html>app</html>").unwrap();
    std::fs::write(dir.path().join("assets/app.js"), "console.log(1)").unwrap();
    std::fs::write(dir.path().join(".env"), "SECRET=1").unwrap();
    let config = HttpConfig { static_dir: Some(dir.path().to_owned()), ..HttpConfig::default() };
    let server = TestServer::with_config(config, None);

    let index = server.get("/");
    assert_eq!((index.status, index.text().as_str()), (200, "<html>app</html>"));
    let js = server.get("/assets/app.js");
    assert_eq!(
        (js.header("content-type"), js.text().as_str()),
        (Some("text/javascript; charset=utf-8"), "console.log(1)")
    );
    for path in [
        "/heroes/42",
        "/.env",
        "/../../../../etc/passwd",
        "/assets/../../etc/passwd",
        "/assets/%2e%2e/x",
    ] {
        let response = server.get(path);
        assert_eq!(
            (response.status, response.text().as_str()),
            (200, "<html>app</html>"),
            "{path}"
        );
    }
    assert_eq!(server.get("/api/nope").status, 404);
    assert_eq!(server.request("POST", "/heroes/42", &[], None).status, 404);
}

/// Stopping PostgreSQL turns the API into 503s; starting it again heals the pool and the
/// listener (which announces `Resync`) without restarting anything. Uses a private cluster
/// so that other tests keep their server.
#[test]
fn database_outage_gives_503_and_recovers() {
    let mut cluster = private_cluster();
    cluster.create_database("outage").unwrap();
    let url = cluster.url("outage");
    let store = Store::connect(StoreConfig::new(&url)).unwrap();
    phx_threads::store::migrate::run(&mut store.client().unwrap()).unwrap();
    let (listener, events) = listening(&url, &store);
    let server = TestServer::start(Some(store));
    create(&server, "Before");
    assert!(matches!(recv(&events, "create event"), StoreEvent::Change { .. }));

    cluster.stop().unwrap();
    let unavailable = json!({"errors": {"detail": "Service Unavailable"}});
    for _ in 0..3 {
        check(&server, "GET", "/api/superheroes", None, 503, unavailable.clone());
    }
    assert_eq!(server.get("/healthz").json()["database"], "down");

    cluster.start_server().unwrap();
    let response: Response = server.get("/api/superheroes");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(server.get("/healthz").json()["database"], "up");
    assert_eq!(recv(&events, "resync after restart"), StoreEvent::Resync);
    create(&server, "After");
    assert!(matches!(recv(&events, "create after restart"), StoreEvent::Change { .. }));
    listener.shutdown().unwrap();
}

/// openapi.yaml is the contract: every documented (method, path) is routed and every route
/// is documented.
#[test]
fn openapi_documents_exactly_the_routes() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let documented = openapi_operations(&text);
    let routed: BTreeSet<(String, String)> =
        routes().into_iter().map(|(m, p)| (m.to_owned(), p.to_owned())).collect();
    assert_eq!(documented, routed);
}

/// A plain (unquoted) YAML value may not contain `: ` or ` #`: YAML reads the first as a
/// nested mapping and the second as a comment, and the spec no longer loads in Postman or
/// schemathesis (CI once went red on exactly this).
#[test]
fn openapi_plain_values_hold_no_colon_space_or_comment_mark() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let bad: Vec<String> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| plain_value_is_ambiguous(line))
        .map(|(n, line)| format!("line {}: {}", n + 1, line.trim()))
        .collect();
    assert!(bad.is_empty(), "quote these values or use a block scalar:\n{}", bad.join("\n"));
}

fn plain_value_is_ambiguous(line: &str) -> bool {
    let item = line.trim_start().trim_start_matches("- ");
    let Some((_, value)) = item.split_once(": ") else { return false };
    let plain = !value.starts_with(['\'', '"', '|', '>', '[', '{', '&', '*']);
    plain && (value.contains(": ") || value.contains(" #"))
}

/// The (METHOD, path) pairs under `paths:`, read by indentation: paths at two spaces, their
/// operations at four. openapi.yaml is written in that plain block style on purpose.
fn openapi_operations(yaml: &str) -> BTreeSet<(String, String)> {
    const METHODS: [&str; 8] =
        ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    let mut operations = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let key = line.trim().strip_suffix(':');
        match (indent, key) {
            (2, Some(p)) => path = Some(p.trim_matches(|c| c == '\'' || c == '"').to_owned()),
            (4, Some(m)) if METHODS.contains(&m) => {
                operations.insert((
                    m.to_ascii_uppercase(),
                    path.clone().expect("operation under a path"),
                ));
            }
            _ => {}
        }
    }
    operations
}

/// Keep-alive clients that connect at the same moment are all served while every one of them
/// stays connected (tiny_http once queued some of them behind threads already claimed, until
/// another client disconnected: vendor/tiny_http/PATCHES.md, 5).
#[test]
fn keep_alive_clients_connecting_at_once_are_all_served() {
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::Duration;

    let server = TestServer::start(None);
    let mut clients: Vec<TcpStream> =
        (0..24).map(|_| TcpStream::connect(server.addr).expect("connect")).collect();
    for c in &mut clients {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("write");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let response = crate::support::http::read_response(c, false);
        assert_eq!(response.status, 200, "client {i}");
    }
}
