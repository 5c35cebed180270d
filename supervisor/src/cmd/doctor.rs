//! `verify` and `salvage`: what a user runs when a store is damaged; and `upgrade`, which moves
//! a store of an older format to this build's.

use crate::cli::{SalvageArgs, UpgradeArgs, VerifyArgs};
use crate::engine::Error;
use crate::store::{salvage, Store};
use crate::util::thousands;

/// `supervisor verify --store S`: 0 when the store is sound, 2 when it is damaged.
pub fn verify(args: &VerifyArgs) -> Result<i32, Error> {
    let r = salvage::verify(&args.store)?;
    let path = args.store.display();
    println!("store     {path}");
    println!("job       {}", r.job.as_deref().unwrap_or("unreadable"));
    match &r.unopenable {
        Some(why) => println!("sled      cannot open it: {why}"),
        None => println!("sled      reads {} records intact", thousands(r.readable)),
    }
    if let Some(left) = r.left_by_last_run.filter(|&left| r.readable < left) {
        println!(
            "damaged   the last run left {} records: {} are gone from what sled reads",
            thousands(left),
            thousands(left - r.readable)
        );
    }
    if r.metadata_lost {
        println!("damaged   the metadata (job, format) is gone from sled");
    }
    for (ids, why) in &r.damaged {
        println!("damaged   block of ids {ids}: {why}");
    }
    if let Some(why) = &r.sled_failed {
        println!("damaged   sled failed while reading: {why}");
    }
    println!("salvage   {} records are intact in the store's files", thousands(r.recoverable));
    if let Some((range, missing)) = r.last_range {
        println!("          of the last run's ids {range}, {} have no intact record", thousands(missing));
    }
    if r.sound() {
        println!("verdict   sound");
        Ok(0)
    } else {
        println!("verdict   damaged: `supervisor salvage --store {path} --into NEW` copies what is intact into a new store; run the job on NEW to fetch the rest");
        Ok(2)
    }
}

/// `supervisor salvage --store S --into T`.
pub fn salvage(args: &SalvageArgs) -> Result<i32, Error> {
    let s = salvage::salvage(&args.store, &args.into)?;
    println!("salvaged  {} records into {} (job {})", thousands(s.records), args.into.display(), s.job);
    if let Some((range, missing)) = s.missing {
        println!(
            "missing   {} ids of the last run's {range}: the same job on the new store fetches them",
            thousands(missing)
        );
    }
    Ok(0)
}

/// `supervisor upgrade --store S`.
pub fn upgrade(args: &UpgradeArgs) -> Result<i32, Error> {
    match Store::upgrade_in_place(&args.store)? {
        Some(("2", blocks)) => println!(
            "upgraded  {} from format 2 to format {}: {} blocks moved out of sled into segments",
            args.store.display(),
            crate::store::FORMAT,
            thousands(blocks)
        ),
        Some((from, _)) => println!(
            "upgraded  {} from format {from} to format {}: its blocks are read as they are, and written in \
             format {} as their ids are next written",
            args.store.display(),
            crate::store::FORMAT,
            crate::store::FORMAT
        ),
        None => println!("current   {} is already format {}", args.store.display(), crate::store::FORMAT),
    }
    Ok(0)
}
