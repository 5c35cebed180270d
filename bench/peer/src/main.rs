//! The fifty-line program a Rust programmer writes instead of flota: tokio and reqwest, a fixed
//! number of requests in flight (`buffer_unordered`), every body appended to a file. For
//! scripts/bench, which runs it beside flota against the same server.
//!
//! usage: flota-peer URL_TEMPLATE IDS CONCURRENCY OUTPUT   (`{id}` in the template; ids 0..IDS)

use std::io::Write;

use futures::StreamExt;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, template, ids, concurrency, output] = args.as_slice() else {
        eprintln!("usage: flota-peer URL_TEMPLATE IDS CONCURRENCY OUTPUT");
        std::process::exit(2);
    };
    let ids: u64 = ids.parse().expect("IDS is a number");
    let concurrency: usize = concurrency.parse().expect("CONCURRENCY is a number");
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("a client");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(output).expect("creates OUTPUT"));
    let started = std::time::Instant::now();
    let mut bodies = futures::stream::iter(0..ids)
        .map(|id| {
            let (client, url) = (client.clone(), template.replace("{id}", &id.to_string()));
            async move {
                // Retried a few times, as anyone would.
                for _ in 0..5 {
                    if let Ok(resp) = client.get(&url).send().await {
                        if resp.status().is_success() {
                            if let Ok(body) = resp.bytes().await {
                                return Some((id, body));
                            }
                        }
                    }
                }
                None
            }
        })
        .buffer_unordered(concurrency);
    let (mut ok, mut failed) = (0u64, 0u64);
    while let Some(result) = bodies.next().await {
        match result {
            Some((id, body)) => {
                writeln!(out, "{id}\t{}", String::from_utf8_lossy(&body)).expect("writes");
                ok += 1;
            }
            None => failed += 1,
        }
    }
    out.flush().expect("flushes");
    let secs = started.elapsed().as_secs_f64();
    println!("{{\"ok\":{ok},\"failed\":{failed},\"secs\":{secs},\"items_per_sec\":{}}}", ok as f64 / secs);
}
