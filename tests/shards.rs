//! More than one machine: shards as separate supervisors, each on its own store, merged into
//! one; and jobs whose ids come from a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::*;

/// The ids of `range` that shard `index` of `count` owns (blocks of 256, round-robin).
fn owned(range: std::ops::Range<u64>, index: u64, count: u64) -> Vec<u64> {
    range.filter(|id| (id / 256) % count == index).collect()
}

fn ids_of(store: &Path) -> Vec<u64> {
    export(store).iter().map(|r| r["id"].as_u64().expect("an id")).collect()
}

/// Runs shards `0..count` of `ids` at once, as separate supervisors with stores `part-I.sled`,
/// each told its shard by `shard_env(I)` (flags, environment); returns the stores.
fn run_shards(
    api: &MockApi,
    dir: &Path,
    ids: &str,
    count: u64,
    shard_env: impl Fn(u64) -> (Vec<String>, Vec<(String, String)>),
) -> Vec<PathBuf> {
    let stores: Vec<PathBuf> = (0..count).map(|i| dir.join(format!("part-{i}.sled"))).collect();
    let running: Vec<Running> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let mut args = job_args(&api.url(), ids, store);
            set(&mut args, "--workers", "2");
            let (flags, env) = shard_env(i as u64);
            if flags.iter().any(|f| f == "--ids-file") {
                let at = args.iter().position(|a| a == "--ids").expect("--ids");
                args.drain(at..at + 2);
            }
            args.extend(flags);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            spawn_with_env(&strs(&args), &env)
        })
        .collect();
    for (i, r) in running.into_iter().enumerate() {
        let out = r.wait(RUN_DEADLINE);
        out.assert_code(0);
        let shard = &summary(&out)["shard"];
        assert_eq!(
            (shard["index"].as_u64(), shard["count"].as_u64()),
            (Some(i as u64), Some(count)),
            "{shard}"
        );
    }
    stores
}

fn merge(out: &Path, inputs: &[PathBuf]) -> Outcome {
    let mut args = vec!["merge".to_owned(), path_str(out).to_owned()];
    args.extend(inputs.iter().map(|p| path_str(p).to_owned()));
    run(&strs(&args))
}

fn status(store: &Path) -> String {
    stdout_of(&["status", "--store", path_str(store)])
}

#[test]
fn three_shards_fetch_every_id_once_and_merge_into_one_complete_store() {
    let (api, dir, _) = setup(&[]);
    let stores =
        run_shards(&api, dir.path(), "0..5000", 3, |i| (vec!["--shard".into(), format!("{i}/3")], vec![]));
    for (i, store) in stores.iter().enumerate() {
        assert_eq!(ids_of(store), owned(0..5000, i as u64, 3), "shard {i} holds exactly its ids");
        assert!(status(store).contains(&format!("shard {i}/3")));
    }
    assert_eq!(api.requests(), 5000, "each id asked for once across the shards");
    let merged = dir.path().join("merged.sled");
    let out = merge(&merged, &stores);
    out.assert_code(0);
    assert!(out.stdout.contains("complete     yes: each of its 5,000 ids has a record"), "{}", out.stdout);
    assert!(out.stdout.contains("overlaps     none"), "{}", out.stdout);
    assert_complete(&merged, 0..5000);
    assert!(status(&merged).contains("complete  yes"), "{}", status(&merged));
    // The merged store is a whole store of the job: a rerun on it has nothing to fetch.
    let rerun = Job::new(&api.url(), "0..5000", &merged).run();
    rerun.assert_code(0);
    assert_eq!(figure(&rerun, "skipped"), 5000);
    assert_eq!(api.requests(), 5000);
}

#[test]
fn shards_are_read_from_a_slurm_array_or_a_kubernetes_indexed_job() {
    let (api, dir, _) = setup(&[]);
    // sbatch --array=1-3: task ids 1, 2, 3.
    let slurm = run_shards(&api, dir.path(), "0..3000", 3, |i| {
        let env = [
            ("SLURM_ARRAY_TASK_ID", (i + 1).to_string()),
            ("SLURM_ARRAY_TASK_MIN", "1".into()),
            ("SLURM_ARRAY_TASK_COUNT", "3".into()),
        ];
        (vec![], env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect())
    });
    let merged = dir.path().join("slurm.sled");
    merge(&merged, &slurm).assert_code(0);
    assert_complete(&merged, 0..3000);

    let k8s_dir = dir.path().join("k8s");
    std::fs::create_dir(&k8s_dir).expect("mkdir");
    let k8s = run_shards(&api, &k8s_dir, "0..3000", 3, |i| {
        (vec!["--shards".into(), "3".into()], vec![("JOB_COMPLETION_INDEX".to_owned(), i.to_string())])
    });
    let merged = dir.path().join("k8s.sled");
    merge(&merged, &k8s).assert_code(0);
    assert_complete(&merged, 0..3000);

    // An Indexed Job without --shards cannot know its part: refused, nothing created.
    let store = dir.path().join("unsure.sled");
    let args = job_args(&api.url(), "0..3000", &store);
    let out = spawn_with_env(&strs(&args), &[("JOB_COMPLETION_INDEX", "1")]).wait(RUN_DEADLINE);
    out.assert_code(2);
    assert!(out.stderr.contains("give --shards N"), "{}", out.stderr);
    assert!(!store.exists());
}

#[test]
fn a_store_refuses_a_run_of_another_shard_and_changes_nothing() {
    let (api, dir, store) = setup(&[]);
    Job::new(&api.url(), "0..1000", &store).flag("--shard", "0/3").run().assert_code(0);
    let before = export(&store);
    for (shard, want) in [
        (Some("1/3"), "holds shard 0/3 of its job, not 1/3"),
        (Some("0/2"), "holds shard 0/3 of its job, not 0/2"),
        (None, "run it with --shard 0/3"),
    ] {
        let mut args = job_args(&api.url(), "0..1000", &store);
        if let Some(s) = shard {
            set(&mut args, "--shard", s);
        }
        let out = run(&strs(&args));
        out.assert_code(2);
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    }
    assert_eq!(export(&store), before, "refused runs change nothing");
    // A whole store refuses a shard.
    let whole = dir.path().join("whole.sled");
    Job::new(&api.url(), "0..10", &whole).run().assert_code(0);
    let out = Job::new(&api.url(), "0..10", &whole).flag("--shard", "1/2").run();
    out.assert_code(2);
    assert!(out.stderr.contains("holds the whole job, not shard 1/2"), "{}", out.stderr);
}

#[test]
fn merge_reports_missing_shards_and_refuses_stores_of_another_job() {
    let (api, dir, _) = setup(&[]);
    let stores =
        run_shards(&api, dir.path(), "0..2000", 3, |i| (vec!["--shard".into(), format!("{i}/3")], vec![]));
    // Shard 1 left out: a store with gaps, exit 3, and a run on it fills them.
    let merged = dir.path().join("merged.sled");
    let out = merge(&merged, &[stores[0].clone(), stores[2].clone()]);
    out.assert_code(3);
    let missing = owned(0..2000, 1, 3).len();
    assert!(
        out.stdout
            .contains(&format!("no: {missing} of its 2,000 ids have no record (the first gaps: 256..512")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("not merged   shards 1/3"), "{}", out.stdout);
    assert!(status(&merged).contains("complete  no"));
    let before = api.requests();
    Job::new(&api.url(), "0..2000", &merged).run().assert_code(0);
    assert_eq!(api.requests() - before, missing as u64, "the run fetched exactly the gaps");
    assert_complete(&merged, 0..2000);
    assert!(status(&merged).contains("complete  yes"));

    // Overlaps: a shard given beside the whole store it is part of.
    let again = dir.path().join("again.sled");
    let out = merge(&again, &[merged.clone(), stores[1].clone()]);
    out.assert_code(0);
    assert!(
        out.stdout.contains(&format!("overlaps     {missing} ids are in more than one store")),
        "{}",
        out.stdout
    );
    assert_complete(&again, 0..2000);

    // Refusals: exit 2, nothing created.
    let other_job = dir.path().join("other.sled");
    Job::new(&format!("http://{}/items/{{id}}?v=2", api.addr), "0..2000", &other_job).run().assert_code(0);
    let other_ids = dir.path().join("other-ids.sled");
    Job::new(&api.url(), "0..2001", &other_ids).run().assert_code(0);
    let out_path = dir.path().join("refused.sled");
    for (inputs, want) in [
        (vec![stores[0].clone(), other_job.clone()], "is of the job"),
        (vec![merged.clone(), other_ids.clone()], "covers ids 0..2001"),
        (vec![stores[0].clone(), stores[0].clone()], "is given twice"),
        (vec![stores[0].clone(), dir.path().join("none.sled")], "does not exist"),
    ] {
        let out = merge(&out_path, &inputs);
        out.assert_code(2);
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
        assert!(!out_path.exists(), "a refused merge creates nothing");
    }
    let out = merge(&merged, &stores);
    out.assert_code(2);
    assert!(out.stderr.contains("exists: merge writes a new store"), "{}", out.stderr);
}

#[test]
fn an_ids_file_fetches_exactly_its_ids_and_the_store_remembers_them() {
    let (api, dir, store) = setup(&[]);
    let file = dir.path().join("ids.txt");
    std::fs::write(&file, "# catalogue ids\n900000\n5\n\n  17  \n5\n123456789012\n# end\n").expect("write");
    let mut args = job_args(&api.url(), "0..1", &store);
    args.retain(|a| a != "--ids" && a != "0..1");
    args.extend(["--ids-file".to_owned(), path_str(&file).to_owned()]);
    let out = run(&strs(&args));
    out.assert_code(0);
    let records = export(&store);
    let want = [5, 17, 900_000, 123_456_789_012];
    assert_eq!(ids_of(&store), want, "each listed id once, nothing else");
    for rec in &records {
        let id = rec["id"].as_u64().expect("id");
        assert_eq!(rec["body"].as_str(), Some(mockapi::body_for(id).as_str()));
    }
    let st = status(&store);
    assert!(
        st.contains(&format!("covers    the 4 ids listed in {} (5..=123456789012)", file.display())),
        "{st}"
    );
    assert!(st.contains("complete  yes: each of its 4 ids"), "{st}");
    assert_eq!(api.requests(), 4);

    // From stdin, the same list: nothing to fetch.
    let mut child = Command::new(SUPERVISOR)
        .args(strs(&args).iter().map(|a| if *a == path_str(&file) { "-" } else { a }))
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    child.stdin.take().expect("piped").write_all(b"17\n5\n900000\n123456789012\n").expect("writes");
    watch(child).wait(RUN_DEADLINE).assert_code(0);
    assert_eq!(api.requests(), 4, "the same ids: all stored already");

    // A bad line: one line naming it, exit 2, the store unchanged.
    std::fs::write(&file, "1\n2\n# ok\n3x\n").expect("write");
    let out = run(&strs(&args));
    out.assert_code(2);
    assert!(
        out.stderr.contains(&format!("--ids-file {}: line 4: `3x` is not an id", file.display())),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1);
    assert_eq!(ids_of(&store), want);
    assert!(status(&store).contains("the 4 ids listed in"));
}

#[test]
fn shards_of_an_ids_file_merge_into_the_whole_list() {
    let (api, dir, _) = setup(&[]);
    let file = dir.path().join("ids.txt");
    let ids: Vec<u64> = (0..600u64).map(|i| i * i * 7 + 3).collect();
    let text: String = ids.iter().rev().map(|id| format!("{id}\n")).collect();
    std::fs::write(&file, text).expect("write");
    let stores = run_shards(&api, dir.path(), "0..1", 3, |i| {
        (vec!["--shard".into(), format!("{i}/3"), "--ids-file".into(), path_str(&file).to_owned()], vec![])
    });
    let merged = dir.path().join("merged.sled");
    let out = merge(&merged, &stores);
    out.assert_code(0);
    assert!(out.stdout.contains("each of its 600 ids"), "{}", out.stdout);
    assert_eq!(ids_of(&merged), ids);
    assert_eq!(api.requests(), 600);
}

/// A recipe of scripts/deploy/slurm run as Slurm would run it, by bash with `env`; a task of an
/// array when `task` is `(id, min, count)`.
fn slurm_script(name: &str, dir: &Path, env: &[(&str, String)], task: Option<(u64, u64, u64)>) -> Running {
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/deploy/slurm");
    let mut cmd = Command::new("bash");
    cmd.arg(recipes.join(name))
        .current_dir(dir)
        .env("FLOTA_THREADS", "8")
        .env("FLOTA_LOG_LEVEL", "warn")
        .env("SLURM_CPUS_PER_TASK", "2")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("FLOTA_SUPERVISOR")
        .env_remove("FLOTA_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    match task {
        Some((id, min, count)) => cmd
            .env("SLURM_ARRAY_TASK_ID", id.to_string())
            .env("SLURM_ARRAY_TASK_MIN", min.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", count.to_string()),
        None => cmd.env_remove("SLURM_ARRAY_TASK_ID"),
    };
    watch(cmd.spawn().expect("bash starts"))
}

#[test]
fn the_slurm_recipe_runs_an_array_merges_it_and_reruns_a_shard_by_its_name() {
    let (api, dir, _) = setup(&[]);
    let bin_dir = Path::new(SUPERVISOR).parent().expect("a directory");
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let stores = dir.path().join("stores");
    let env = vec![
        ("PATH", path),
        ("FLOTA_URL", api.url()),
        ("FLOTA_IDS", "0..4000".to_owned()),
        ("FLOTA_STORES", stores.display().to_string()),
        ("FLOTA_WORKERS", "1".to_owned()),
    ];
    // --array=1-3: task ids 1, 2, 3; stores named by shard, 0 to 2.
    let tasks: Vec<_> =
        (1..=3).map(|t| slurm_script("flota-array.sbatch", dir.path(), &env, Some((t, 1, 3)))).collect();
    for task in tasks {
        let out = task.wait(RUN_DEADLINE);
        out.assert_code(0);
        assert!(out.stdout.contains("with 1 workers"), "FLOTA_WORKERS reaches the run: {}", out.stdout);
    }
    for t in 0..3 {
        assert_eq!(ids_of(&stores.join(format!("shard-{t}.sled"))), owned(0..4000, t, 3));
    }
    // The README's rerun of one shard: it resumes its store, and fetches nothing more.
    let mut rerun = env.clone();
    rerun.push(("FLOTA_SHARD", "1/3".to_owned()));
    slurm_script("flota-array.sbatch", dir.path(), &rerun, Some((1, 1, 1))).wait(RUN_DEADLINE).assert_code(0);
    assert_eq!(api.requests(), 4000);
    // Merged, then merged again: each into a store of its own, each reported.
    for name in ["merged.sled", "merged-2.sled"] {
        let out = slurm_script("flota-merge.sbatch", dir.path(), &env, None).wait(RUN_DEADLINE);
        out.assert_code(0);
        assert!(out.stdout.contains(&format!("into {}", stores.join(name).display())), "{}", out.stdout);
        assert!(out.stdout.contains("complete  yes"), "{}", out.stdout);
        assert_complete(&stores.join(name), 0..4000);
    }
    let mut named = env.clone();
    named.push(("FLOTA_MERGED", stores.join("merged.sled").display().to_string()));
    let out = slurm_script("flota-merge.sbatch", dir.path(), &named, None).wait(RUN_DEADLINE);
    out.assert_code(2);
    assert!(out.stderr.contains("merged.sled exists") && !out.stdout.contains("complete"), "{}", out.stderr);
    // One store named for an array of three is refused, and changes nothing.
    let mut one = env.clone();
    one.push(("FLOTA_STORE", stores.join("shard-0.sled").display().to_string()));
    let out = slurm_script("flota-array.sbatch", dir.path(), &one, Some((1, 1, 3))).wait(RUN_DEADLINE);
    out.assert_code(2);
    assert!(out.stderr.contains("each task of an array needs its own"), "{}", out.stderr);
    assert_eq!(api.requests(), 4000);
}

#[test]
fn the_slurm_recipes_say_when_the_supervisor_binary_is_not_there() {
    let dir = tempdir();
    let env = vec![
        ("PATH", "/usr/bin:/bin".to_owned()),
        ("FLOTA_URL", "http://127.0.0.1:9/items/{id}".to_owned()),
        ("FLOTA_IDS", "0..10".to_owned()),
    ];
    for (script, task) in [("flota-array.sbatch", Some((0, 0, 1))), ("flota-merge.sbatch", None)] {
        let out = slurm_script(script, dir.path(), &env, task).wait(RUN_DEADLINE);
        out.assert_code(2);
        assert!(
            out.stderr.contains("no supervisor binary") && out.stderr.contains("FLOTA_SUPERVISOR"),
            "{}",
            out.stderr
        );
        let mut at = env.clone();
        at.push(("FLOTA_SUPERVISOR", "/nonexistent/supervisor".to_owned()));
        let out = slurm_script(script, dir.path(), &at, task).wait(RUN_DEADLINE);
        out.assert_code(2);
        assert!(out.stderr.contains("at /nonexistent/supervisor"), "{}", out.stderr);
    }
    // Requeued tasks append to their log.
    let array = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/deploy/slurm/flota-array.sbatch"),
    )
    .expect("the script");
    assert!(array.lines().any(|l| l == "#SBATCH --open-mode=append"));
}

#[test]
fn submit_asks_for_what_the_largest_node_has() {
    // sinfo and sbatch stand-ins: a cluster of one node of 2 CPUs and 1,900 MB.
    let dir = tempdir();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    let calls = dir.path().join("sbatch-calls");
    write_script(&bin.join("sinfo"), "#!/bin/sh\necho '2 1900'\n");
    write_script(&bin.join("sbatch"), &format!("#!/bin/sh\necho \"$@\" >> {}\necho 42\n", calls.display()));
    let submit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/deploy/slurm/submit");
    let out = Command::new("bash")
        .arg(&submit)
        .arg("--array=0-9")
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .expect("submit runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("the largest node has 2 CPUs and 1900M"), "{stdout}");
    let calls = std::fs::read_to_string(&calls).expect("sbatch was called");
    let array = calls.lines().next().expect("the array's sbatch");
    assert!(array.starts_with("--parsable --cpus-per-task=2 --mem=1425M --array=0-9 "), "{array}");
    assert!(calls.lines().nth(1).is_some_and(|l| l.contains("--dependency=afterany:42")), "{calls}");
}
