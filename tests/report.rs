//! What is said about a store: `status` and `export`.

use crate::util::*;

/// A store with ids 0..300 answered and 300..310 failed: the range is extended while the same
/// address serves only errors.
fn mixed_store(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let store = dir.join("items.sled");
    let healthy = MockApi::start(&[]);
    let url = healthy.url();
    Job::new(&url, "0..300", &store).run().assert_code(0);
    let addr = healthy.addr.clone();
    drop(healthy);
    let broken = MockApi::start_on(&addr, &["--error-rate", "1.0"]);
    Job::new(&broken.url(), "0..310", &store).flag("--max-attempts", "1").run().assert_code(3);
    (store, url)
}

#[test]
fn status_shows_the_job_the_counts_and_the_last_run() {
    let dir = tempdir();
    let (store, url) = mixed_store(dir.path());
    let out = run(&["status", "--store", path_str(&store)]);
    out.assert_code(0);
    let s = &out.stdout;
    assert!(s.contains(&format!("job       {url}")), "{s}");
    assert!(s.contains("answered  300 ids (300 with a 2xx status)"), "{s}");
    assert!(s.contains("failed    10 ids (0 quarantined)"), "{s}");
    assert!(s.contains("last run  ids 0..310") && s.contains("10 fetched") && s.contains("exit 3"), "{s}");
}

#[test]
fn csv_export_to_a_file_has_a_row_per_id_in_order() {
    let dir = tempdir();
    let (store, _) = mixed_store(dir.path());
    let file = dir.path().join("out.csv");
    run(&["export", "--store", path_str(&store), "--format", "csv", "--output", path_str(&file)])
        .assert_code(0);
    let mut reader = csv::Reader::from_path(&file).expect("a CSV file");
    let header: Vec<String> = reader.headers().expect("header").iter().map(String::from).collect();
    assert_eq!(header, ["id", "status", "attempts", "fetched_at", "body", "body_base64", "error"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("a row")).collect();
    assert_eq!(rows.len(), 310);
    for (id, row) in rows.iter().enumerate() {
        assert_eq!(&row[0], id.to_string());
        if id < 300 {
            assert_eq!((&row[1], &row[4]), ("200", mockapi::body_for(id as u64).as_str()));
            assert!(row[3].ends_with('Z') && row[3].len() == 20, "fetched_at in RFC 3339: {}", &row[3]);
        } else {
            assert_eq!(
                (&row[1], &row[3], &row[4], &row[6]),
                ("", "", "", "gave up after 1 attempt: HTTP 500")
            );
        }
    }
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.path()).expect("lists").flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 2, "only the store and the export: {leftovers:?}");
}

#[test]
fn export_only_keeps_one_kind_of_record_and_ids_one_range() {
    // Every 10th id is missing (404, an answer but not a success), id 55 kills its workers
    // (quarantined), and about a tenth of the others fail their only attempt (500).
    let (api, dir, store) = setup(&["--missing-every", "10", "--error-rate", "0.1", "--seed", "3"]);
    Job::new(&api.url(), "0..200", &store)
        .flag("--max-attempts", "1")
        .flag("--chaos", "crash-on=55")
        .run()
        .assert_code(3);
    let all = export(&store);
    assert_eq!(all.len(), 200);
    let status = |r: &serde_json::Value| r["status"].as_u64();
    let quarantined =
        |r: &serde_json::Value| r["error"].as_str().is_some_and(|e| e.starts_with("quarantined:"));
    let ids = |f: &dyn Fn(&serde_json::Value) -> bool| -> Vec<u64> {
        all.iter().filter(|r| f(r)).map(|r| r["id"].as_u64().expect("an id")).collect()
    };
    let expected = [
        ("ok", ids(&|r| status(r).is_some_and(|s| (200..300).contains(&s)))),
        ("answered", ids(&|r| status(r).is_some())),
        ("failed", ids(&|r| status(r).is_none())),
        ("quarantined", ids(&|r| quarantined(r))),
    ];
    assert_eq!(expected[3].1, [55]);
    assert!(expected[2].1.len() > 5 && expected[1].1.len() > expected[0].1.len() + 15, "{expected:?}");
    let s = path_str(&store);
    for (only, want) in &expected {
        let out = run(&["export", "--store", s, "--only", only]);
        out.assert_code(0);
        let got: Vec<u64> = out
            .stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("JSON")["id"].as_u64().expect("an id")
            })
            .collect();
        assert_eq!(&got, want, "--only {only}");
    }
    let out = run(&["export", "--store", s, "--ids", "20..=39", "--only", "answered", "--format", "csv"]);
    out.assert_code(0);
    let got: Vec<u64> = csv::Reader::from_reader(out.stdout.as_bytes())
        .records()
        .map(|r| r.expect("a row")[0].parse().expect("an id"))
        .collect();
    let want: Vec<u64> = expected[1].1.iter().copied().filter(|id| (20..40).contains(id)).collect();
    assert_eq!(got, want);
    let out = run(&["export", "--store", s, "--only", "fine"]);
    out.assert_code(2);
    assert!(out.stderr.contains("invalid value 'fine' for '--only"), "{}", out.stderr);
    drop(dir);
}
