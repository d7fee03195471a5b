//! The broker's ACL on a 1,000-rule Mosquitto `acl_file`, beside Mosquitto's own algorithm.
//!
//! The file: 10 anonymous rules, 240 users with 4 rules each (`home/{user}/#` readwrite, a
//! `deny` under it, a `read` on their region's alerts, a `write` on their telemetry) and 30
//! patterns (`devices/%c/#`, `users/%u/inbox/#`, `fleet/%u/group{k}/#`, ...): 1,000 rules.
//! Each group measures the compiled [`ClientAcl`] beside `acl::reference`, a transliteration
//! of Mosquitto 2.0's `mosquitto_acl_check_default` (scan the client's rules, then substitute
//! `%u` and `%c` into every pattern, a new string each, and match it), in the same run.
//!
//! Before criterion, both checks run in alternating batches for two seconds each and the
//! fastest batch of each is printed, per check: the batch least disturbed by the rest of a
//! shared machine, so the steadiest ratio. A counting `#[global_allocator]` shows what
//! criterion does not: allocations per check (the
//! bench stops if a compiled check allocates) and the memory of one connection's `ClientAcl`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rallymq_benches::{CountingAllocator, allocated, allocations};
use rallymq_broker::acl::reference::{ReferenceAcl, Wanted};
use rallymq_broker::acl::{Acl, ClientAcl};
use rallymq_topic::TopicName;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const USERS: usize = 240;
const PATTERNS: usize = 30;

/// The 1,000-rule file described in the module docs.
fn acl_file() -> String {
    let mut file = String::from("# anonymous clients\n");
    for i in 0..10 {
        file.push_str(&format!("topic read public/feed{i}/#\n"));
    }
    for u in 0..USERS {
        file.push_str(&format!(
            "\nuser user{u}\ntopic readwrite home/user{u}/#\ntopic deny home/user{u}/locked\n\
             topic read alerts/region{}/+\ntopic write telemetry/user{u}/+/data\n",
            u % 10
        ));
    }
    file.push_str("\npattern readwrite devices/%c/#\npattern read users/%u/inbox/#\n");
    file.push_str("pattern write $SYS/broker/connection/%c/state\n");
    for k in 3..PATTERNS {
        file.push_str(&format!("pattern read fleet/%u/group{k}/#\n"));
    }
    file
}

/// What one connection checks per message: allowed by its section, refused by its `deny`,
/// allowed by a pattern, refused after every rule is tried.
const TOPICS: [&str; 8] = [
    "home/user17/lights/kitchen",
    "home/user17/locked",
    "devices/dev-17/status",
    "telemetry/user17/t1/data",
    "alerts/region7/fire",
    "home/user18/lights",
    "users/user17/inbox/1",
    "other/topic/with/several/levels",
];

fn topics() -> Vec<TopicName> {
    TOPICS.iter().map(|t| TopicName::new(*t).unwrap()).collect()
}

fn count_allocations(work: impl FnOnce()) -> usize {
    let before = allocations();
    work();
    allocations() - before
}

/// Prints allocations per check and a connection's memory; stops if a compiled check
/// allocates.
fn report(acl: &Acl, reference: &ReferenceAcl, topics: &[TopicName]) {
    let client = acl.for_client(Some("user17"), "dev-17", None);
    let compiled = count_allocations(|| {
        for topic in topics {
            black_box(client.can_publish(topic));
            black_box(client.can_receive(topic));
        }
    });
    let naive_client = reference.for_client(Some("user17"), "dev-17");
    let naive = count_allocations(|| {
        for topic in topics {
            black_box(naive_client.check(topic, Wanted::Write));
            black_box(naive_client.check(topic, Wanted::Read));
        }
    });
    let checks = 2 * topics.len();
    println!(
        "allocations per check: compiled {}, mosquitto_scan {:.1}",
        compiled as f64 / checks as f64,
        naive as f64 / checks as f64
    );
    assert_eq!(compiled, 0, "a compiled ACL check allocated");

    let ids: Vec<String> = (0..1000).map(|i| format!("dev-{i}")).collect();
    let mut clients: Vec<ClientAcl> = Vec::with_capacity(ids.len());
    let before = allocated();
    clients.extend(
        ids.iter()
            .map(|id| acl.for_client(Some("user17"), id, None)),
    );
    let names_bytes: usize = (0..1000)
        .map(|i| format!("dev-{i}").len() + "user17".len())
        .sum();
    let per_client = (allocated() - before) as f64 / 1000.0;
    println!(
        "memory per connection: {} B ClientAcl + {per_client:.0} B on the heap (its user name and \
         client id: {:.0} B on average)",
        size_of::<ClientAcl>(),
        names_bytes as f64 / 1000.0
    );
    drop(clients);
}

/// The fastest of alternating batches of `ours` and `theirs` (each one pass over `checks`
/// checks) for `within`, per check.
fn interleaved(
    checks: usize,
    within: Duration,
    mut ours: impl FnMut(),
    mut theirs: impl FnMut(),
) -> (Duration, Duration) {
    let mut best = (Duration::MAX, Duration::MAX);
    let end = Instant::now() + within;
    while Instant::now() < end {
        let start = Instant::now();
        ours();
        best.0 = best.0.min(start.elapsed());
        let start = Instant::now();
        theirs();
        best.1 = best.1.min(start.elapsed());
    }
    let per_check = |batch: Duration| batch / checks as u32;
    (per_check(best.0), per_check(best.1))
}

fn print_interleaved(acl: &Acl, reference: &ReferenceAcl, topics: &[TopicName]) {
    const PASSES: usize = 16;
    let client = acl.for_client(Some("user17"), "dev-17", None);
    let naive_client = reference.for_client(Some("user17"), "dev-17");
    for (check, wanted) in [
        ("can_publish", Wanted::Write),
        ("can_receive", Wanted::Read),
    ] {
        let (ours, theirs) = interleaved(
            PASSES * topics.len(),
            Duration::from_secs(2),
            || {
                for _ in 0..PASSES {
                    for topic in topics {
                        black_box(match wanted {
                            Wanted::Write => client.can_publish(black_box(topic)),
                            Wanted::Read => client.can_receive(black_box(topic)),
                        });
                    }
                }
            },
            || {
                for _ in 0..PASSES {
                    for topic in topics {
                        black_box(naive_client.check(black_box(topic), wanted));
                    }
                }
            },
        );
        println!(
            "interleaved fastest batch, {check}: compiled {ours:?} per check, mosquitto_scan \
             {theirs:?} per check ({:.1}x)",
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
    let (ours, theirs) = interleaved(
        1,
        Duration::from_secs(2),
        || {
            drop(black_box(acl.for_client(
                Some(black_box("user17")),
                "dev-17",
                None,
            )))
        },
        || {
            drop(black_box(
                reference.for_client(Some(black_box("user17")), "dev-17"),
            ))
        },
    );
    println!(
        "interleaved fastest batch, for_client: compiled {ours:?}, mosquitto_scan {theirs:?} \
         ({:.1}x)",
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}

fn acl(c: &mut Criterion) {
    let text = acl_file();
    let rules = text
        .lines()
        .filter(|line| line.starts_with("topic") || line.starts_with("pattern"))
        .count();
    assert_eq!(rules, 1000);
    let acl = Acl::parse(text.as_bytes(), Path::new("acl")).unwrap();
    let reference = ReferenceAcl::parse(text.as_bytes()).unwrap();
    let topics = topics();
    report(&acl, &reference, &topics);
    print_interleaved(&acl, &reference, &topics);

    let client = acl.for_client(Some("user17"), "dev-17", None);
    let naive_client = reference.for_client(Some("user17"), "dev-17");
    for (check, wanted) in [
        ("can_publish", Wanted::Write),
        ("can_receive", Wanted::Read),
    ] {
        let mut group = c.benchmark_group(format!("acl/{check}"));
        group.throughput(Throughput::Elements(topics.len() as u64));
        group.bench_function("compiled", |b| {
            b.iter(|| {
                for topic in &topics {
                    black_box(match wanted {
                        Wanted::Write => client.can_publish(black_box(topic)),
                        Wanted::Read => client.can_receive(black_box(topic)),
                    });
                }
            })
        });
        group.bench_function("mosquitto_scan", |b| {
            b.iter(|| {
                for topic in &topics {
                    black_box(naive_client.check(black_box(topic), wanted));
                }
            })
        });
        group.finish();
    }

    let mut group = c.benchmark_group("acl/for_client");
    group.bench_function("compiled", |b| {
        b.iter(|| black_box(acl.for_client(Some(black_box("user17")), "dev-17", None)))
    });
    group.bench_function("mosquitto_scan", |b| {
        b.iter(|| black_box(reference.for_client(Some(black_box("user17")), "dev-17")))
    });
    group.finish();

    let mut group = c.benchmark_group("acl/compile_1000_rules");
    group.sample_size(20);
    group.bench_function("compiled", |b| {
        b.iter(|| black_box(Acl::parse(black_box(text.as_bytes()), Path::new("acl")).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, acl);
criterion_main!(benches);
