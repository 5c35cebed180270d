//! `supervisor merge OUT IN...`: joins the stores of one job's shards into one store, and says
//! whether it is complete.
//!
//! Every input must be a store of the same job (URL template and ids) and the shards must be
//! of one cut (the same N); anything else is refused before OUT is created. OUT is a new store
//! of the whole job, which `status` reads and a run resumes like any other.

use std::path::PathBuf;
use std::time::Instant;

use super::summary::coverage_lines;
use crate::cli::MergeArgs;
use crate::engine::Error;
use crate::job::{Ids, Keyed, Scope, Shard};
use crate::store::{Store, StoreError};
use crate::util::thousands;

/// `supervisor merge`: exit 0 when OUT holds a record for every id of the job, 3 when ids are
/// missing (a shard not merged, or not finished), 2 when the stores cannot be merged.
pub fn run(args: &MergeArgs) -> Result<i32, Error> {
    let started = Instant::now();
    if args.out.exists() {
        return Err(Error::Usage(format!(
            "{} exists: merge writes a new store (give a path that does not exist)",
            args.out.display()
        )));
    }
    let inputs = open_inputs(&args.inputs)?;
    let (url, scope) = job_of(&inputs)?;
    if let Ids::Keys(_) = scope.ids {
        check_key_shards(&inputs)?;
    }
    let out = Store::open_for_job(&args.out, &url)?;
    let whole = Scope { ids: scope.ids.clone(), shard: None };
    match &whole.ids {
        Ids::Keys(k) => {
            let held = inputs.iter().map(|i| if let Ids::Keys(k) = &i.scope.ids { k.held } else { 0 }).sum();
            let whole = Scope { ids: Ids::Keys(Keyed { held, ..k.clone() }), shard: None };
            let stores: Vec<&Store> = inputs.iter().map(|i| &i.store).collect();
            out.adopt_merged_keys(&whole, &stores)?;
        }
        Ids::Listed(_) => {
            out.adopt_scope(&whole, None)?;
            out.copy_listed_from(&inputs[0].store)?;
        }
        Ids::Range(_) => out.adopt_scope(&whole, None)?,
    }
    println!("merge: {} stores of the job {url}, {}, into {}", inputs.len(), whole, args.out.display());
    let (mut records, mut overlaps, mut first_overlap) = (0, 0, None::<u64>);
    for Input { path, store, scope } in &inputs {
        let m = out.merge_from(store)?;
        let part = scope.shard.map_or_else(|| "whole".to_owned(), |s| format!("shard {s}"));
        println!("  {part:<12} {}  {} records", path.display(), thousands(m.records));
        records += m.records;
        overlaps += m.overlaps;
        first_overlap = match (first_overlap, m.first_overlap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let new_records = records - overlaps;
    out.record_manifest(new_records)?;
    let coverage = out.coverage(&out.covered()?)?;
    println!("  merged       {} records in {:.2} s", thousands(new_records), started.elapsed().as_secs_f64());
    match first_overlap {
        None => println!("  overlaps     none"),
        Some(first) => println!(
            "  overlaps     {} ids are in more than one store (the first: {first}); an answer was kept over a \
             failure, else the first store's",
            thousands(overlaps)
        ),
    }
    let missing_shards = missing_shards(&inputs);
    for (label, line) in coverage_lines(&coverage, matches!(whole.ids, Ids::Keys(_))) {
        println!("  {label:<12} {line}");
    }
    if !missing_shards.is_empty() {
        let mut list: Vec<String> = missing_shards.iter().take(10).map(Shard::to_string).collect();
        if missing_shards.len() > 10 {
            list.push(format!("and {} more", missing_shards.len() - 10));
        }
        println!("  not merged   shards {}", list.join(", "));
    }
    println!("  store        {}", args.out.display());
    Ok(if coverage.complete() { 0 } else { 3 })
}

/// A store to merge, and the scope it records.
struct Input {
    path: PathBuf,
    store: Store,
    scope: Scope,
}

/// Opens every input (each once), with the scope it records.
fn open_inputs(paths: &[PathBuf]) -> Result<Vec<Input>, Error> {
    let mut seen = Vec::new();
    let mut inputs = Vec::new();
    for path in paths {
        let real = path.canonicalize().map_err(|_| Error::Store(StoreError::Missing(path.clone())))?;
        if seen.contains(&real) {
            return Err(Error::Usage(format!("{} is given twice", path.display())));
        }
        seen.push(real);
        let store = Store::open_existing(path)?;
        let scope = store.scope()?.ok_or_else(|| {
            Error::Usage(format!(
                "{} does not record which ids its job covers (it was made before flota recorded them): run its job \
                 on it once with this version",
                path.display()
            ))
        })?;
        inputs.push(Input { path: path.clone(), store, scope });
    }
    Ok(inputs)
}

/// The job every input belongs to; refuses inputs of different jobs or shard counts.
fn job_of(inputs: &[Input]) -> Result<(String, Scope), Error> {
    let first = &inputs[0];
    let url = first.store.job()?.unwrap_or_default();
    let cut = inputs.iter().find_map(|i| i.scope.shard.map(|s| (i, s)));
    for input in &inputs[1..] {
        let other = input.store.job()?.unwrap_or_default();
        if other != url {
            return Err(mismatch(
                input,
                first,
                format!("is of the job {other}"),
                format!("of the job {url}"),
            ));
        }
        if !input.scope.ids.same(&first.scope.ids) {
            let whole = |s: &Scope| Scope { ids: s.ids.clone(), shard: None };
            let (theirs, ours) = (whole(&input.scope), whole(&first.scope));
            return Err(mismatch(input, first, format!("covers {theirs}"), format!("{ours}")));
        }
        if let (Some(a), Some((holder, b))) = (input.scope.shard, cut) {
            if a.count != b.count {
                return Err(mismatch(input, holder, format!("holds shard {a}"), format!("shard {b}")));
            }
        }
    }
    Ok((url, first.scope.clone()))
}

fn mismatch(input: &Input, other: &Input, theirs: String, ours: String) -> Error {
    let (path, first) = (input.path.display(), other.path.display());
    Error::Usage(format!("cannot merge {path} with {first}: {path} {theirs}, {first} {ours}"))
}

/// A keyed job's stores merge as shards of one cut, each once: each gave its keys ordinals in
/// its own blocks, and a whole store (or a shard twice) would put two keys at one ordinal.
fn check_key_shards(inputs: &[Input]) -> Result<(), Error> {
    let mut seen: Vec<Shard> = Vec::new();
    for input in inputs {
        let Some(shard) = input.scope.shard else {
            return Err(Error::Usage(format!(
                "{} holds a whole keyed job: keyed stores merge as the shards of one cut (--shard I/N), each once",
                input.path.display()
            )));
        };
        if seen.contains(&shard) {
            return Err(Error::Usage(format!(
                "shard {shard} is given twice: a keyed job's shards merge each once (their keys' ordinals would \
                 collide)"
            )));
        }
        seen.push(shard);
    }
    Ok(())
}

/// The shards of the inputs' cut that no input holds (none when a whole store is among them).
fn missing_shards(inputs: &[Input]) -> Vec<Shard> {
    if inputs.iter().any(|i| i.scope.shard.is_none()) {
        return Vec::new();
    }
    let Some(count) = inputs.iter().find_map(|i| i.scope.shard.map(|s| s.count)) else { return Vec::new() };
    (0..count)
        .map(|index| Shard { index, count })
        .filter(|s| !inputs.iter().any(|i| i.scope.shard == Some(*s)))
        .collect()
}
