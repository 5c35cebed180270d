//! What is said about a store: `status` and `export`.

use crate::util::*;

/// A store with ids 0..300 answered and 300..310 failed: the range is extended while the same
/// address serves only errors.
fn mixed_store(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let store = dir.join("items.sled");
    let healthy = MockApi::start(&[]);
    let url = healthy.url();
    run(&strs(&job_args(&url, "0..300", &store))).assert_code(0);
    let addr = healthy.addr.clone();
    drop(healthy);
    let broken = MockApi::start_on(&addr, &["--error-rate", "1.0"]);
    let mut args = job_args(&broken.url(), "0..310", &store);
    set(&mut args, "--max-attempts", "1");
    run(&strs(&args)).assert_code(3);
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
    assert_eq!(header, ["id", "status", "attempts", "body", "body_base64", "error"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("a row")).collect();
    assert_eq!(rows.len(), 310);
    for (id, row) in rows.iter().enumerate() {
        assert_eq!(&row[0], id.to_string());
        if id < 300 {
            assert_eq!((&row[1], &row[3]), ("200", mockapi::body_for(id as u64).as_str()));
        } else {
            assert_eq!((&row[1], &row[3], &row[5]), ("", "", "gave up after 1 attempt: HTTP 500"));
        }
    }
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.path()).expect("lists").flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 2, "only the store and the export: {leftovers:?}");
}
