//! Requests as templates, for real: a GraphQL POST whose body names each key as JSON, a form PUT
//! of ids, a key in a header; bad templates refused before anything is made; and the method and
//! body as part of the job a store belongs to.

use std::path::Path;

use crate::util::*;

fn write_keys(dir: &Path, keys: &[&str]) -> std::path::PathBuf {
    let path = dir.join("keys.txt");
    std::fs::write(&path, keys.join("\n") + "\n").expect("writes the keys");
    path
}

/// Each record's key (or id) and what mockapi's `/echo` says it was sent.
fn echoes(store: &Path) -> Vec<(serde_json::Value, serde_json::Value)> {
    export(store)
        .into_iter()
        .map(|rec| {
            assert_eq!(rec["status"].as_u64(), Some(200), "{rec}");
            let echo: serde_json::Value =
                serde_json::from_str(rec["body"].as_str().expect("a body")).expect("the echo is JSON");
            let item = if rec.get("key").is_some() { rec["key"].clone() } else { rec["id"].clone() };
            (item, echo)
        })
        .collect()
}

const GRAPHQL: &str = r#"{"query":"query($k: ID!){ user(key: $k){ key name } }","variables":{"k":"{key}"}}"#;

#[test]
fn a_graphql_post_names_each_key_in_its_json_body_whatever_the_key_holds() {
    let api = MockApi::start(&[]);
    let dir = tempdir();
    let keys = ["plain", "with \"quotes\"", "back\\slash", "emoji🙂", "tab\there", "{braces}", "$dollar"];
    let file = write_keys(dir.path(), &keys);
    let store = dir.path().join("gql.sled");
    let url = format!("http://{}/echo", api.addr);
    let job = Job::keyed(&url, &file, &store).flag("--method", "POST").flag("--body", GRAPHQL);
    let out = job.run();
    out.assert_code(0);
    assert_eq!(figure(&out, "answered"), keys.len() as u64);
    let echoes = echoes(&store);
    assert_eq!(echoes.len(), keys.len());
    for (key, echo) in &echoes {
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["content_type"], "application/json");
        let sent: serde_json::Value =
            serde_json::from_str(echo["body"].as_str().expect("a body")).expect("the body sent is JSON");
        assert_eq!(&sent["variables"]["k"], key, "each answer names its own key");
        assert_eq!(sent["query"], "query($k: ID!){ user(key: $k){ key name } }", "braces stay literal");
    }
    // The store is the cache of this request: the same command sends nothing; another body is
    // another job.
    let again = job.run();
    again.assert_code(0);
    assert_eq!(figure(&again, "pacing.requests"), 0);
    let other =
        Job::keyed(&url, &file, &store).flag("--method", "POST").flag("--body", r#"{"k":"{key}"}"#).run();
    other.assert_code(2);
    assert!(other.stderr.contains("belongs to the job POST"), "{}", other.stderr);
}

#[test]
fn a_form_body_and_a_header_carry_the_item_encoded_for_where_they_stand() {
    let api = MockApi::start(&[]);
    let dir = tempdir();
    let url = format!("http://{}/echo", api.addr);
    let store = dir.path().join("form.sled");
    let out = Job::new(&url, "0..300", &store)
        .flag("--method", "put")
        .flag("--body", "id={id}&note=a b")
        .flag("--content-type", "application/x-www-form-urlencoded")
        .run();
    out.assert_code(0);
    let sent = echoes(&store);
    assert_eq!(sent.len(), 300);
    for (id, echo) in &sent {
        assert_eq!(echo["method"], "PUT");
        assert_eq!(echo["content_type"], "application/x-www-form-urlencoded");
        assert_eq!(echo["body"].as_str(), Some(format!("id={id}&note=a b").as_str()));
    }

    let keys = ["a b", "ü/ß", "x&y"];
    let file = write_keys(dir.path(), &keys);
    let store = dir.path().join("header.sled");
    Job::keyed(&url, &file, &store).flag("--header", "X-Item: {key}").run().assert_code(0);
    for (key, echo) in echoes(&store) {
        assert_eq!(echo["method"], "GET");
        assert_eq!(echo["x_item"], key, "the key as it is, in a header");
    }
}

#[test]
fn bad_request_templates_are_refused_in_one_line_and_create_nothing() {
    let dir = tempdir();
    let store = dir.path().join("never.sled");
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, GRAPHQL).expect("writes");
    let u = "http://127.0.0.1:9/graphql";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--url", u, "--ids", "0..5", "--method", "GE T"], "is not an HTTP method"),
        (
            vec![
                "--url",
                u,
                "--ids",
                "0..5",
                "--method",
                "POST",
                "--body",
                "{id}",
                "--body-file",
                path_str(&body_file),
            ],
            "give one",
        ),
        (
            vec!["--url", "http://127.0.0.1:9/x/{id}", "--ids", "0..5", "--content-type", "text/plain"],
            "give --body",
        ),
        (vec!["--url", u, "--ids", "0..5", "--method", "POST", "--body", "{}"], "has no {id} or {key}"),
        (vec!["--url", u, "--ids", "0..5", "--body", "{\"k\":\"{key}\"}"], "--url has {key}"),
        (vec!["--url", u, "--ids", "0..5", "--body", "{key:json}"], "is not a placeholder"),
        (
            vec!["--url", u, "--ids", "0..5", "--body-file", "/nonexistent/body.json"],
            "--body-file /nonexistent",
        ),
        (
            vec!["--url", u, "--ids", "0..5", "--method", "POST", "--body", "{id}", "--model", "async"],
            "--model async sends GET",
        ),
    ];
    assert_refused_in_one_line(&cases, &store);
}
