//! The project's reason to exist, end to end: a visitor behind the load balancer, in each
//! session mode, with nodes killed under them. Real processes, a real HTTP client with a
//! cookie jar.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use e2e::topology::{Options, Topology};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::Value;

/// A browser: keeps cookies, does not follow redirects (so each request is one LB pick).
struct Visitor {
    http: reqwest::Client,
    base: String,
}

/// One `GET /api/session` as seen by the client.
#[derive(Debug)]
struct Seen {
    backend: String,
    node: String,
    user: Option<String>,
    cart: Vec<String>,
}

impl Visitor {
    fn new(topo: &Topology) -> Visitor {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Visitor {
            http,
            base: topo.url(""),
        }
    }

    async fn session(&self) -> Seen {
        let res = self
            .http
            .get(format!("{}/api/session", self.base))
            .send()
            .await
            .expect("GET /api/session");
        assert_eq!(res.status(), StatusCode::OK, "GET /api/session");
        let backend = header(&res, "x-backend");
        let body: Value = res.json().await.expect("session JSON");
        Seen {
            backend,
            node: body["node"].as_str().unwrap_or_default().to_string(),
            user: body["user"].as_str().map(str::to_string),
            cart: body["cart"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// POSTs a form; returns the node that handled it.
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> String {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .form(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "POST {path}");
        header(&res, "x-backend")
    }
}

fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn start(mode: &str, affinity: &str) -> Topology {
    Topology::start(Options::new(mode, affinity, 3))
}

#[tokio::test]
async fn round_robin_with_local_sessions_loses_the_session_on_other_nodes() {
    let topo = start("local", "none");
    // The session cookie is sent by hand: a node that does not know the session answers
    // with a Set-Cookie clearing it, and a browser obeying that would lose the session on
    // the login node too. This test is about which nodes hold the session.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let res = http
        .post(topo.url("/login"))
        .form(&[("name", "ada")])
        .send()
        .await
        .expect("POST /login");
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "POST /login");
    let login_node = header(&res, "x-backend");
    let cookie = sid_cookie(&res).expect("login sets the session cookie");
    let mut seen_elsewhere = 0;
    for _ in 0..6 {
        let res = http
            .get(topo.url("/api/session"))
            .header(COOKIE, format!("sid={cookie}"))
            .send()
            .await
            .expect("GET /api/session");
        assert_eq!(res.status(), StatusCode::OK, "GET /api/session");
        let backend = header(&res, "x-backend");
        let body: Value = res.json().await.expect("session JSON");
        let node = body["node"].as_str().unwrap_or_default();
        assert_eq!(backend, node, "X-Backend names the node that answered");
        if node == login_node {
            assert_eq!(body["user"], "ada", "the login node keeps the session");
        } else {
            assert!(
                body["user"].is_null(),
                "{node} has never seen this session: {body}"
            );
            seen_elsewhere += 1;
        }
    }
    assert!(
        seen_elsewhere >= 3,
        "round-robin sent requests to the other nodes"
    );
}

/// The value of the `sid` cookie a response sets, if any.
fn sid_cookie(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|h| h.strip_prefix("sid="))
        .and_then(|h| h.split(';').next())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

#[tokio::test]
async fn cookie_affinity_keeps_a_local_session_until_its_node_dies() {
    let mut topo = start("local", "cookie");
    let v = Visitor::new(&topo);
    let pinned = v.post("/login", &[("name", "grace")]).await;
    for _ in 0..30 {
        let s = v.session().await;
        assert_eq!(s.node, pinned, "affinity keeps the visitor on one node");
        assert_eq!(s.user.as_deref(), Some("grace"));
    }

    topo.kill_node(&pinned);
    let s = v.session().await;
    assert_ne!(s.node, pinned, "the dead node cannot answer");
    assert_eq!(s.user, None, "its sessions died with it");
    let again = v.session().await;
    assert_eq!(
        again.node, s.node,
        "the visitor is re-pinned to the new node"
    );
}

#[tokio::test]
async fn round_robin_with_shared_sessions_survives_a_node_kill() {
    let mut topo = start("shared", "none");
    let v = Visitor::new(&topo);
    v.post("/login", &[("name", "linus")]).await;
    v.post("/cart", &[("item", "tea")]).await;
    let mut nodes = BTreeSet::new();
    for _ in 0..9 {
        let s = v.session().await;
        assert_eq!(s.backend, s.node, "X-Backend names the node that answered");
        assert_eq!(s.user.as_deref(), Some("linus"), "on {}", s.node);
        assert_eq!(s.cart, ["tea"], "on {}", s.node);
        nodes.insert(s.node);
    }
    assert_eq!(nodes.len(), 3, "every node served the session");

    // Other visitors too: none of them may lose anything when a node dies.
    let mut others = Vec::new();
    for i in 0..5 {
        let o = Visitor::new(&topo);
        o.post("/login", &[("name", &format!("user{i}"))]).await;
        others.push(o);
    }
    topo.kill_node("app2");
    let mut after = HashMap::new();
    for _ in 0..4 {
        for (i, o) in others.iter().enumerate() {
            let s = o.session().await;
            assert_eq!(
                s.user,
                Some(format!("user{i}")),
                "session of user{i} after the kill"
            );
            *after.entry(s.node).or_insert(0) += 1;
        }
        let s = v.session().await;
        assert_eq!(s.user.as_deref(), Some("linus"));
        assert_eq!(s.cart, ["tea"]);
    }
    assert!(
        !after.contains_key("app2"),
        "a dead node answered: {after:?}"
    );
    assert_eq!(after.len(), 2, "both live nodes keep serving: {after:?}");
}

#[tokio::test]
async fn round_robin_with_jwt_sessions_is_seen_everywhere_and_tampering_fails_safe() {
    let topo = start("jwt", "none");
    let v = Visitor::new(&topo);
    v.post("/login", &[("name", "barbara")]).await;
    v.post("/cart", &[("item", "book")]).await;
    let mut nodes = BTreeSet::new();
    for _ in 0..6 {
        let s = v.session().await;
        assert_eq!(s.user.as_deref(), Some("barbara"), "on {}", s.node);
        assert_eq!(s.cart, ["book"]);
        nodes.insert(s.node);
    }
    assert_eq!(nodes.len(), 3);

    // Grab the real token, then present altered versions of it.
    let res = v
        .http
        .post(topo.url("/login"))
        .form(&[("name", "barbara")])
        .send()
        .await
        .expect("login");
    let token = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|h| h.strip_prefix("token="))
        .and_then(|h| h.split(';').next())
        .expect("login sets the token cookie")
        .to_string();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts");
    let forged_claims = format!("{}.{}x.{}", parts[0], parts[1], parts[2]);
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], "A".repeat(parts[2].len()));
    let anon = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    for bad in [
        forged_claims,
        alg_none,
        bad_sig,
        "garbage".into(),
        "x".repeat(3000),
    ] {
        for path in ["/api/session", "/"] {
            let res = anon
                .get(topo.url(path))
                .header(COOKIE, format!("token={bad}"))
                .send()
                .await
                .expect("request with a bad token");
            assert_eq!(res.status(), StatusCode::OK, "{path} with token {bad:.40}");
            if path == "/api/session" {
                let body: Value = res.json().await.expect("json");
                assert!(
                    body["user"].is_null(),
                    "a bad token must not log anyone in: {body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn forged_session_and_affinity_cookies_are_treated_as_absent() {
    let topo = start("shared", "cookie");
    let v = Visitor::new(&topo);
    v.post("/login", &[("name", "alan")]).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let forged = [
        "sid=AAAAAAAAAAAAAAAAAAAAAA",
        "sid=../../etc/passwd",
        "sid=%00%ff%fe",
        "lb_backend=app1",
        "lb_backend=app1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "lb_backend=nosuch.c2lnbmF0dXJl; sid=%%%",
        "lb_backend=; sid=",
    ];
    for cookie in forged {
        let res = client
            .get(topo.url("/api/session"))
            .header(COOKIE, cookie)
            .send()
            .await
            .expect("request with forged cookies");
        assert_eq!(res.status(), StatusCode::OK, "cookie {cookie:?}");
        let body: Value = res.json().await.expect("json");
        assert!(
            body["user"].is_null(),
            "{cookie:?} must not reach a session: {body}"
        );
    }
    // A real, signed `<id>.<version>` cookie, altered: the signature no longer matches, so
    // it is no session at all (never a session's older or newer version), and it is
    // cleared.
    let res = client
        .post(topo.url("/login"))
        .form(&[("name", "alan")])
        .send()
        .await
        .expect("login");
    let real = sid_cookie(&res).expect("login sets the session cookie");
    let (signed, version) = real
        .rsplit_once('.')
        .expect("the cookie ends in .<version>");
    assert!(version.parse::<u64>().is_ok(), "version in {real:?}");
    let mut flipped = real.clone().into_bytes();
    let middle = flipped.len() / 2;
    flipped[middle] = if flipped[middle] == b'A' { b'B' } else { b'A' };
    let tampered = [
        format!("{signed}.{}", version.parse::<u64>().unwrap_or(0) + 1),
        format!("{signed}.0"),
        String::from_utf8(flipped).expect("ascii"),
        real[8..].to_string(),
        format!("{real}0"),
    ];
    for bad in tampered {
        let res = client
            .get(topo.url("/api/session"))
            .header(COOKIE, format!("sid={bad}"))
            .send()
            .await
            .expect("request with a tampered cookie");
        assert_eq!(res.status(), StatusCode::OK, "sid={bad}");
        let cleared = res
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .any(|h| h.starts_with("sid=;") && h.contains("Max-Age=0"));
        let body: Value = res.json().await.expect("json");
        assert!(
            body["user"].is_null(),
            "sid={bad} reached a session: {body}"
        );
        assert!(
            cleared,
            "sid={bad} is answered with a cookie that clears it"
        );
    }
    // The untouched cookie still works, and the real visitor is unaffected.
    let res = client
        .get(topo.url("/api/session"))
        .header(COOKIE, format!("sid={real}"))
        .send()
        .await
        .expect("request with the real cookie");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["user"], "alan", "the genuine cookie: {body}");
    assert_eq!(v.session().await.user.as_deref(), Some("alan"));
}

#[tokio::test]
async fn store_outage_gives_a_clear_503_and_recovers_by_itself() {
    let mut topo = start("shared", "none");
    let v = Visitor::new(&topo);
    v.post("/login", &[("name", "edsger")]).await;
    topo.kill_store();
    for _ in 0..3 {
        let res = v
            .http
            .get(topo.url("/"))
            .send()
            .await
            .expect("the node answers while the store is down");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = res.text().await.expect("body");
        assert!(
            body.contains("session store"),
            "the page names the problem: {body}"
        );
    }
    topo.restart_store();
    e2e::wait_for_async(
        "the nodes to reach the restarted store",
        Duration::from_secs(15),
        || async {
            let res = v.http.get(topo.url("/api/session")).send().await.ok()?;
            (res.status() == StatusCode::OK).then_some(())
        },
    )
    .await;
    // The restarted store is empty: the visitor is anonymous but served, and can log in again.
    v.post("/login", &[("name", "edsger")]).await;
    assert_eq!(v.session().await.user.as_deref(), Some("edsger"));
}
