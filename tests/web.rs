//! HTTP as real servers speak it: HTTPS with a private CA (made at test time), compressed
//! bodies stored decoded.

use std::path::{Path, PathBuf};

use crate::util::*;

/// A CA, and a server certificate it signed for 127.0.0.1 and localhost, as PEM files in
/// `dir`: (ca.pem, server.pem, server.key).
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "flota test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key")).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    let paths = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&paths.0, ca.pem()).expect("write CA");
    std::fs::write(&paths.1, server.pem()).expect("write certificate");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write key");
    paths
}

/// mockapi serving HTTPS with the CA's server certificate.
fn tls_api(dir: &Path) -> (MockApi, PathBuf) {
    let (ca, cert, key) = private_ca(dir);
    let api = MockApi::start(&["--tls-cert", path_str(&cert), "--tls-key", path_str(&key)]);
    (api, ca)
}

#[test]
fn https_with_a_private_ca_stores_every_body() {
    let dir = tempdir();
    let (api, ca) = tls_api(dir.path());
    let store = dir.path().join("items.sled");
    let out = Job::new(&format!("https://{}/items/{{id}}", api.addr), "0..300", &store)
        .flag("--ca-cert", path_str(&ca))
        .run();
    out.assert_code(0);
    assert_complete(&store, 0..300);
}

/// The store's counts, by `status --json`.
fn counts(store: &Path) -> serde_json::Value {
    let out = run(&["status", "--store", path_str(store), "--json"]);
    out.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json is JSON");
    status["counts"].clone()
}

#[test]
fn an_untrusted_certificate_stops_the_run_within_seconds_and_stores_nothing() {
    let dir = tempdir();
    let (api, ca) = tls_api(dir.path());
    let store = dir.path().join("items.sled");
    let mut args = job_args(&format!("https://{}/items/{{id}}", api.addr), "0..100000", &store);
    let out = spawn(&strs(&args)).wait(std::time::Duration::from_secs(10));
    out.assert_code(4);
    let error = out.stderr.lines().find(|l| l.starts_with("supervisor: error: ")).expect("an error line");
    assert!(error.contains("certificate") && error.contains("--ca-cert"), "names the fix: {error}");
    assert_eq!(out.stderr.matches("supervisor: error").count(), 1, "{}", out.stderr);
    let c = counts(&store);
    assert_eq!((c["answered"].as_u64(), c["failed"].as_u64()), (Some(0), Some(0)), "nothing stored: {c}");
    // The same command with the fix fetches every id.
    set(&mut args, "--ids", "0..3000");
    set(&mut args, "--ca-cert", path_str(&ca));
    run(&strs(&args)).assert_code(0);
    assert_complete(&store, 0..3000);
}

#[test]
fn insecure_fetches_from_an_unverified_server_and_says_so() {
    let dir = tempdir();
    let (api, _ca) = tls_api(dir.path());
    let store = dir.path().join("items.sled");
    let mut args = as_text(job_args(&format!("https://{}/items/{{id}}", api.addr), "0..50", &store));
    args.push("--insecure".into());
    let out = run(&strs(&args));
    out.assert_code(0);
    assert!(out.stderr.contains("--insecure: https certificates are NOT verified"), "{}", out.stderr);
    assert!(out.stdout.contains("certificates NOT verified (--insecure)"), "{}", out.stdout);
    assert_complete(&store, 0..50);
}

#[test]
fn a_bad_ca_file_is_one_line_and_exit_2() {
    let dir = tempdir();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello\n").expect("write");
    let store = dir.path().join("items.sled");
    for (file, want) in
        [(not_pem.as_path(), "no PEM certificate"), (Path::new("/nonexistent/ca.pem"), "No such file")]
    {
        let out = Job::new("https://127.0.0.1:9/items/{id}", "0..5", &store)
            .flag("--ca-cert", path_str(file))
            .run();
        out.assert_code(2);
        assert!(out.stderr.contains("--ca-cert") && out.stderr.contains(want), "{}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(!store.exists(), "a refused run creates nothing");
    }
    let mut args = job_args("https://127.0.0.1:9/items/{id}", "0..5", &store);
    set(&mut args, "--ca-cert", path_str(&not_pem));
    args.push("--insecure".into());
    run(&strs(&args)).assert_code(2);
}

#[test]
fn compressed_bodies_are_stored_decoded() {
    for coding in ["gzip", "br"] {
        let (api, _dir, store) = setup(&["--compress", coding, "--body-bytes", "2048"]);
        Job::new(&api.url(), "0..200", &store).run().assert_code(0);
        let stats = api.stats();
        assert_eq!(stats.compressed, stats.requests, "{coding}: every answer was compressed");
        assert!(stats.requests >= 200);
        let records = export(&store);
        assert_eq!(records.len(), 200);
        for (rec, id) in records.iter().zip(0..) {
            assert_eq!(rec["id"].as_u64(), Some(id));
            assert_eq!(
                rec["body"].as_str(),
                Some(mockapi::sized_body(id, 2048).as_str()),
                "{coding}: id {id}"
            );
        }
    }
}

#[test]
fn max_body_counts_decoded_bytes() {
    // 16 KiB of this JSON arrives as about 5 KiB of gzip: under the limit on the wire, over it
    // once decoded, and decoded is what would be stored.
    let (api, _dir, store) = setup(&["--compress", "gzip", "--body-bytes", "16384"]);
    Job::new(&api.url(), "0..5", &store).flag("--max-body", "8K").run().assert_code(3);
    for rec in export(&store) {
        assert_eq!(rec["error"].as_str(), Some("body exceeds the limit of 8192 bytes"), "{rec}");
    }
}

#[test]
fn a_host_name_url_fetches_every_id_and_a_name_that_does_not_exist_stops_the_run() {
    // `localhost` is looked up once and kept (its addresses tried in turn: mockapi listens on
    // 127.0.0.1 only, so a ::1 first refuses and the next one serves).
    let (api, _dir, store) = setup(&[]);
    let url = api.url().replace("127.0.0.1", "localhost");
    assert!(url.starts_with("http://localhost:"), "{url}");
    Job::new(&url, "0..3000", &store).run().assert_code(0);
    assert_complete(&store, 0..3000);
    assert_eq!(api.requests(), 3000, "one request per id");

    // A name that does not exist (NXDOMAIN, `.invalid` by RFC 6761): the run stops at once,
    // with nothing stored.
    let dir = tempdir();
    let store = dir.path().join("items.sled");
    let out = Job::new("http://no-such-host.invalid:9/items/{id}", "0..50000", &store)
        .spawn()
        .wait(std::time::Duration::from_secs(10));
    out.assert_code(4);
    assert!(out.stderr.contains("no-such-host.invalid does not resolve"), "{}", out.stderr);
    let c = counts(&store);
    assert_eq!((c["answered"].as_u64(), c["failed"].as_u64()), (Some(0), Some(0)), "nothing stored: {c}");
}
