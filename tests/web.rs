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
    let mut args = job_args(&format!("https://{}/items/{{id}}", api.addr), "0..300", &store);
    set(&mut args, "--ca-cert", path_str(&ca));
    let out = run(&strs(&args));
    out.assert_code(0);
    assert_complete(&store, 0..300);
}

#[test]
fn an_untrusted_certificate_fails_each_id_once_with_the_reason() {
    let dir = tempdir();
    let (api, _ca) = tls_api(dir.path());
    let store = dir.path().join("items.sled");
    let args = job_args(&format!("https://{}/items/{{id}}", api.addr), "0..20", &store);
    let out = run(&strs(&args));
    out.assert_code(3);
    let records = export(&store);
    assert_eq!(records.len(), 20);
    for rec in &records {
        let error = rec["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("TLS: ") && error.contains("certificate"), "{rec}");
        assert!(error.contains("pass its CA to --ca-cert"), "says what to do: {rec}");
        assert_eq!(rec["attempts"].as_u64(), Some(1), "a certificate is not retried: {rec}");
    }
}

#[test]
fn insecure_fetches_from_an_unverified_server_and_says_so() {
    let dir = tempdir();
    let (api, _ca) = tls_api(dir.path());
    let store = dir.path().join("items.sled");
    let mut args = job_args(&format!("https://{}/items/{{id}}", api.addr), "0..50", &store);
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
        let mut args = job_args("https://127.0.0.1:9/items/{id}", "0..5", &store);
        set(&mut args, "--ca-cert", path_str(file));
        let out = run(&strs(&args));
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
        let args = job_args(&api.url(), "0..200", &store);
        run(&strs(&args)).assert_code(0);
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
    let mut args = job_args(&api.url(), "0..5", &store);
    set(&mut args, "--max-body", "8K");
    run(&strs(&args)).assert_code(3);
    for rec in export(&store) {
        assert_eq!(rec["error"].as_str(), Some("body exceeds the limit of 8192 bytes"), "{rec}");
    }
}

#[test]
fn a_host_name_url_fetches_every_id_and_a_name_that_never_resolves_fails_each_id_with_its_reason() {
    // `localhost` is looked up once and kept (its addresses tried in turn: mockapi listens on
    // 127.0.0.1 only, so a ::1 first refuses and the next one serves).
    let (api, _dir, store) = setup(&[]);
    let url = api.url().replace("127.0.0.1", "localhost");
    assert!(url.starts_with("http://localhost:"), "{url}");
    run(&strs(&job_args(&url, "0..3000", &store))).assert_code(0);
    assert_complete(&store, 0..3000);
    assert_eq!(api.requests(), 3000, "one request per id");

    // A name no resolver knows: each attempt is a retryable error, and the id fails with why.
    let dir = tempdir();
    let store = dir.path().join("items.sled");
    let mut args = job_args("http://no-such-host.invalid:9/items/{id}", "0..5", &store);
    set(&mut args, "--max-attempts", "2");
    run(&strs(&args)).assert_code(3);
    for rec in export(&store) {
        assert!(rec["status"].is_null(), "{rec}");
        assert_eq!(rec["attempts"].as_u64(), Some(2), "{rec}");
        let error = rec["error"].as_str().expect("an error");
        assert!(error.starts_with("gave up after 2 attempts: "), "{error}");
    }
}
