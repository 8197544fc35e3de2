//! The node's feature flags and memory breakdown through the management API, as tools
//! and the management UI read them from RabbitMQ 3.10.

use reqwest::Method;
use serde_json::{Value, json};

use super::{api, api_as, on_managed_embedded, on_managed_rabbitmq, uniq};

super::managed_conformance!(feature_flags_and_memory_breakdown);

/// `/api/feature-flags` lists RabbitMQ 3.10's flags, the ones this broker's features
/// stand for enabled, for administrators only; enabling a known flag answers 204 and an
/// unknown one 400. `/api/nodes/NODE/memory` (and `/relative`) break the node's memory
/// down under RabbitMQ's categories, for monitors; another node is 404.
async fn feature_flags_and_memory_breakdown(_url: String, api_base: String, _metrics: String) {
    let (status, flags) = api(&api_base, Method::GET, "/api/feature-flags", None).await;
    assert_eq!(status, 200, "{flags}");
    let flags = flags.as_array().cloned().unwrap_or_default();
    let keys = [
        "name",
        "desc",
        "doc_url",
        "state",
        "stability",
        "provided_by",
    ];
    for flag in &flags {
        let mut have: Vec<&str> = flag
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        have.sort_unstable();
        let mut want = keys.to_vec();
        want.sort_unstable();
        assert_eq!(have, want, "{flag}");
    }
    for name in [
        "quorum_queue",
        "stream_queue",
        "user_limits",
        "virtual_host_metadata",
        "implicit_default_bindings",
        "maintenance_mode_status",
    ] {
        let flag = flags.iter().find(|f| f["name"] == name);
        assert_eq!(
            flag.map(|f| (&f["state"], &f["stability"], &f["provided_by"])),
            Some((&json!("enabled"), &json!("stable"), &json!("rabbit"))),
            "{name} in {flags:?}"
        );
    }
    let enable = |name: &str| format!("/api/feature-flags/{name}/enable");
    let (status, _) = api(
        &api_base,
        Method::PUT,
        &enable("quorum_queue"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 204, "enabling an enabled flag");
    assert_eq!(
        api(
            &api_base,
            Method::PUT,
            &enable("no_such_flag"),
            Some(json!({}))
        )
        .await,
        (
            400,
            json!({"error": "bad_request", "reason": "unsupported"})
        )
    );

    let (status, overview) = api(&api_base, Method::GET, "/api/overview", None).await;
    assert_eq!(status, 200);
    let node = overview["node"]
        .as_str()
        .expect("the overview names its node")
        .to_string();
    let (status, absolute) = api(
        &api_base,
        Method::GET,
        &format!("/api/nodes/{node}/memory"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{absolute}");
    let memory = &absolute["memory"];
    assert_eq!(memory["strategy"], "rss", "{absolute}");
    let rss = memory["total"]["rss"].as_u64().unwrap_or(0);
    assert!(
        rss > 1_000_000,
        "a running node's resident memory: {absolute}"
    );
    for category in [
        "connection_readers",
        "connection_writers",
        "connection_channels",
        "connection_other",
        "queue_procs",
        "quorum_queue_procs",
        "stream_queue_procs",
        "plugins",
        "other_proc",
        "metrics",
        "mgmt_db",
        "mnesia",
        "other_ets",
        "binary",
        "msg_index",
        "code",
        "atom",
        "other_system",
        "allocated_unused",
        "reserved_unallocated",
    ] {
        assert!(memory[category].is_u64(), "{category} in {absolute}");
    }
    let (status, relative) = api(
        &api_base,
        Method::GET,
        &format!("/api/nodes/{node}/memory/relative"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{relative}");
    assert_eq!(relative["memory"]["total"], 100, "{relative}");
    let shares: u64 = relative["memory"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| *k != "total")
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0);
    // RabbitMQ rounds each share up to 1 where it is not empty, and counts reserved
    // memory beside the total: its shares add up to a bit more than 100.
    assert!(
        (90..=200).contains(&shares),
        "percentages, not bytes: {relative}"
    );
    let (status, _) = api(
        &api_base,
        Method::GET,
        "/api/nodes/rabbit@elsewhere/memory",
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Who may see them: a management user neither; a monitor the memory only.
    for (tags, flags_status, memory_status) in [("management", 401, 401), ("monitoring", 401, 200)]
    {
        let user = uniq(tags);
        let created = json!({"password": "pw", "tags": tags});
        let (status, _) = api(
            &api_base,
            Method::PUT,
            &format!("/api/users/{user}"),
            Some(created),
        )
        .await;
        assert_eq!(status, 201, "create {user}");
        let (status, body) = api_as(
            &api_base,
            (&user, "pw"),
            Method::GET,
            "/api/feature-flags",
            None,
        )
        .await;
        assert_eq!(status, flags_status, "{tags}: {body}");
        if status == 401 {
            assert_eq!(
                body,
                json!({"error": "not_authorised", "reason": "Not administrator user"})
            );
        }
        let (status, body) = api_as(
            &api_base,
            (&user, "pw"),
            Method::PUT,
            &enable("quorum_queue"),
            Some(json!({})),
        )
        .await;
        assert_eq!(status, 401, "{tags} enabling a flag: {body}");
        let path = format!("/api/nodes/{node}/memory");
        let (status, body): (u16, Value) =
            api_as(&api_base, (&user, "pw"), Method::GET, &path, None).await;
        assert_eq!(status, memory_status, "{tags}: {body}");
        if status == 401 {
            assert_eq!(
                body,
                json!({"error": "not_authorised", "reason": "Not monitor user"})
            );
        }
        let (status, _) = api(
            &api_base,
            Method::DELETE,
            &format!("/api/users/{user}"),
            None,
        )
        .await;
        assert_eq!(status, 204, "delete {user}");
    }
}
