//! `switchyard bench isolation`: a well-behaved tenant's throughput alone
//! and next to a hostile tenant, round by round.

use std::path::Path;
use std::time::{Duration, Instant};

use switchyard::runtime::Outcome;

use super::support::BenchError;

/// What `switchyard bench isolation` measured.
#[derive(Debug, Clone)]
pub struct IsolationReport {
    /// Messages of the well-behaved tenant per run.
    pub messages: usize,
    /// Attack messages the hostile tenant sent per attacked run.
    pub attacks: usize,
    /// Each round's messages per second of the well-behaved tenant: alone,
    /// then while the hostile tenant attacks.
    pub rounds: Vec<(f64, f64)>,
}

impl IsolationReport {
    /// The median over the rounds of attacked over alone. Rounds alternate
    /// alone and attacked, so a slow spell of the machine lands on both.
    pub fn median_ratio(&self) -> f64 {
        let mut ratios: Vec<f64> = self.rounds.iter().map(|(alone, attacked)| attacked / alone.max(1e-9)).collect();
        ratios.sort_by(f64::total_cmp);
        match ratios.len() {
            0 => 0.0,
            n if n % 2 == 1 => ratios[n / 2],
            n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
        }
    }
}

/// Run a well-behaved tenant alone, then next to a hostile tenant looping,
/// bombing memory and recursing, and compare its throughput. The hostile
/// tenant has the quotas a shared host would give an untrusted tenant: two
/// invocations in flight, 50 per second, 100 ms and 16 MiB each. Runs
/// `rounds` rounds, each alone then attacked, after one uncounted warm-up run.
pub async fn isolation(
    cache_update: &Path,
    hostile: &Path,
    messages: usize,
    attacks: &[String],
    rounds: usize,
) -> Result<IsolationReport, BenchError> {
    let absolute = |p: &Path| std::fs::canonicalize(p).map_err(|e| BenchError::Io(p.display().to_string(), e));
    let (cache_update, hostile) = (&absolute(cache_update)?, &absolute(hostile)?);
    let dir = tempfile::tempdir().map_err(|e| BenchError::Io("temporary directory".into(), e))?;
    let good: String = (0..messages)
        .map(|i| format!("{{\"topic\": \"product.changed\", \"payload\": {{\"id\": \"{i}\", \"name\": \"thing\"}}}}\n"))
        .collect();
    let attack_count = 600;
    let bad: String = (0..attack_count)
        .map(|i| {
            format!("{{\"topic\": \"attack\", \"payload\": {{\"attack\": \"{}\"}}}}\n", attacks[i % attacks.len()])
        })
        .collect();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).map_err(|e| BenchError::Io(path.display().to_string(), e))
    };
    write("good.jsonl", &good)?;
    write("bad.jsonl", &bad)?;
    let config_text = |with_attack: bool| {
        let mut text = format!(
            "data_dir = \".\"\n[sources.good]\ntype = \"file\"\npath = \"good.jsonl\"\nreplay = true\n\
             [tenants.victim.grants]\ncache_prefixes = [\"product:\"]\n\
             [tenants.victim.handlers.cache-update]\nwasm = {:?}\n\
             [[routes]]\nsource = \"good\"\ntopic = \"*\"\ntenant = \"victim\"\nhandler = \"cache-update\"\nconcurrency = 32\n",
            cache_update.display().to_string()
        );
        if with_attack {
            text.push_str(&format!(
                "[sources.bad]\ntype = \"file\"\npath = \"bad.jsonl\"\nreplay = true\n\
                 [tenants.hostile.grants]\ncache_prefixes = [\"hostile:\"]\ndb_tables = [\"hostile\"]\npublish = [\"hostile.*\"]\n\
                 [tenants.hostile.quotas]\nmax_in_flight = 2\nrate_per_sec = 50.0\ntimeout_ms = 100\nmemory_mib = 16\n\
                 [tenants.hostile.handlers.attack]\nwasm = {:?}\n\
                 [[routes]]\nsource = \"bad\"\ntopic = \"*\"\ntenant = \"hostile\"\nhandler = \"attack\"\nmax_attempts = 1\n",
                hostile.display().to_string()
            ));
        }
        text
    };
    let mut rates = Vec::new();
    // A first run alone warms the machine (page cache, CPU frequency,
    // allocator) and is not counted.
    for with_attack in std::iter::once(false).chain((0..rounds.max(1)).flat_map(|_| [false, true])) {
        let path = dir.path().join(format!("switchyard-{with_attack}.toml"));
        std::fs::write(&path, config_text(with_attack)).map_err(|e| BenchError::Io(path.display().to_string(), e))?;
        let config = switchyard::Config::load(&path)?;
        let host = switchyard::Host::build(&config).await?;
        let registry = host.registry();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(host.run(shutdown.clone()));
        let start = Instant::now();
        let Some(victim) = registry.slot("victim", "cache-update").cloned() else {
            return Err(BenchError::NotOk(Outcome::Reject("no victim handler".into())));
        };
        while victim.metrics.handled.load(std::sync::atomic::Ordering::Relaxed) < messages as u64 {
            if start.elapsed() > Duration::from_secs(600) {
                return Err(BenchError::NotOk(Outcome::Failed(switchyard::runtime::Failure::Timeout(600_000))));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        rates.push(messages as f64 / start.elapsed().as_secs_f64());
        shutdown.cancel();
        let _ = run.await;
    }
    let rounds = rates[1..].chunks_exact(2).map(|pair| (pair[0], pair[1])).collect();
    Ok(IsolationReport { messages, attacks: attack_count, rounds })
}
