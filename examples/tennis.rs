//! Live tennis: simulates matches point by point and publishes each change of score, retained,
//! as JSON on `tennis/{match_id}/score`, for the scoreboard the broker serves at `/tennis/`.
//!
//! ```sh
//! cargo run --example tennis -- --broker mqtt://127.0.0.1:1883 [--matches 4] [--speed 2]
//! ```
//!
//! `--speed` is points per second in each match; `--best-of 3|5`; `--seed N` replays the same
//! matches; `--once` stops when every match is over (otherwise a new match starts on the court
//! a few seconds later). The message:
//! `{"players": ["A. Name", "B. Name"], "sets": [[6, 4], [3, 2]], "points": ["30", "15"],
//! "serving": 0, "status": "live", "winner": null}` (the last entry of `sets` is the set in play).

#[path = "tennis/scoring.rs"]
mod scoring;

use std::sync::Arc;
use std::time::Duration;

use rallymq_client::{Client, ClientOptions};
use rallymq_codec::QoS;
use scoring::Match;
use tokio::task::JoinSet;

const USAGE: &str = "usage: tennis [--broker URL] [--matches N] [--speed POINTS_PER_SECOND] \
[--best-of 3|5] [--seed N] [--once]";

const PLAYERS: [&str; 16] = [
    "A. Ashe",
    "B. Borg",
    "C. Evert",
    "D. Dokic",
    "E. Goolagong",
    "F. Perry",
    "G. Sabatini",
    "H. Mandlikova",
    "I. Nastase",
    "J. Connors",
    "K. Rosewall",
    "L. Laver",
    "M. Navratilova",
    "N. Li",
    "O. Medvedeva",
    "P. Sampras",
];

struct Options {
    broker: String,
    matches: usize,
    speed: f64,
    best_of: u32,
    seed: u64,
    once: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        broker: "mqtt://127.0.0.1:1883".into(),
        matches: 4,
        speed: 2.0,
        best_of: 3,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        once: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--broker" => options.broker = value()?,
            "--matches" => {
                options.matches = value()?.parse().map_err(|e| format!("--matches: {e}"))?
            }
            "--speed" => options.speed = value()?.parse().map_err(|e| format!("--speed: {e}"))?,
            "--best-of" => {
                options.best_of = value()?.parse().map_err(|e| format!("--best-of: {e}"))?
            }
            "--seed" => options.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--once" => options.once = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if options.matches == 0 || options.matches > 100 {
        return Err("--matches must be between 1 and 100".into());
    }
    if !(options.speed > 0.0 && options.speed <= 1000.0) {
        return Err("--speed must be above 0 and at most 1000 points per second".into());
    }
    if options.best_of != 3 && options.best_of != 5 {
        return Err("--best-of must be 3 or 5".into());
    }
    Ok(options)
}

/// A small deterministic generator (xorshift64*), so that `--seed` replays the same matches.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The score as the JSON message of `tennis/{match_id}/score`.
fn score_json(players: [&str; 2], game: &Match) -> String {
    let sets = game
        .sets()
        .iter()
        .map(|[a, b]| format!("[{a}, {b}]"))
        .collect::<Vec<_>>()
        .join(", ");
    let [a, b] = game.points();
    let (status, winner) = match game.winner() {
        Some(winner) => ("finished", winner.to_string()),
        None => ("live", "null".to_owned()),
    };
    format!(
        "{{\"players\": [{}, {}], \"sets\": [{sets}], \"points\": [{}, {}], \"serving\": {}, \
         \"status\": \"{status}\", \"winner\": {winner}}}",
        json_string(players[0]),
        json_string(players[1]),
        json_string(&a),
        json_string(&b),
        game.serving(),
    )
}

/// Plays matches on one court, one after the other, publishing every point.
async fn court(
    client: Client,
    court: usize,
    options: Arc<Options>,
    mut rng: Rng,
) -> Result<(), rallymq_client::Error> {
    let topic = format!("tennis/court-{court}/score");
    let pause = Duration::from_secs_f64(1.0 / options.speed);
    loop {
        let first = rng.below(PLAYERS.len());
        let second = (first + 1 + rng.below(PLAYERS.len() - 1)) % PLAYERS.len();
        let players = [PLAYERS[first], PLAYERS[second]];
        // Each player wins a point on serve with their own probability.
        let on_serve = [0.55 + 0.15 * rng.unit(), 0.55 + 0.15 * rng.unit()];
        let mut game = Match::new(options.best_of, rng.below(2));
        println!("court-{court}: {} v {}", players[0], players[1]);
        client
            .publish(&topic, score_json(players, &game), QoS::AtLeastOnce, true)
            .await?;
        while game.winner().is_none() {
            tokio::time::sleep(pause).await;
            let server = game.serving();
            let point = if rng.unit() < on_serve[server] {
                server
            } else {
                1 - server
            };
            game.point(point);
            client
                .publish(&topic, score_json(players, &game), QoS::AtLeastOnce, true)
                .await?;
        }
        let winner = game.winner().unwrap_or_default();
        println!("court-{court}: {} wins {:?}", players[winner], game.sets());
        if options.once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(5).max(pause * 4)).await;
    }
}

#[tokio::main]
async fn main() {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(options).await {
        eprintln!("tennis: {error}");
        std::process::exit(1);
    }
}

async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let client_options = ClientOptions::new(&options.broker).client_id("tennis-simulator");
    let (client, _messages, _) = Client::connect(client_options).await?;
    println!(
        "tennis: {} matches at {} points per second on {} (seed {})",
        options.matches, options.speed, options.broker, options.seed
    );
    let mut seeds = Rng::new(options.seed);
    let options = Arc::new(options);
    let mut courts = JoinSet::new();
    for n in 1..=options.matches {
        courts.spawn(court(
            client.clone(),
            n,
            options.clone(),
            Rng::new(seeds.next()),
        ));
    }
    while let Some(done) = courts.join_next().await {
        done??;
    }
    client.disconnect().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_has_the_documented_shape() {
        let mut game = Match::new(3, 0);
        assert_eq!(
            score_json(["A. Ashe", "B. \"Bjorn\" Borg"], &game),
            r#"{"players": ["A. Ashe", "B. \"Bjorn\" Borg"], "sets": [[0, 0]], "points": ["0", "0"], "serving": 0, "status": "live", "winner": null}"#
        );
        for _ in 0..24 {
            game.point(1);
        }
        assert_eq!(
            score_json(["A", "B"], &game),
            r#"{"players": ["A", "B"], "sets": [[0, 6], [0, 0]], "points": ["0", "0"], "serving": 0, "status": "live", "winner": null}"#
        );
        for _ in 0..24 {
            game.point(1);
        }
        assert!(
            score_json(["A", "B"], &game)
                .ends_with(r#""sets": [[0, 6], [0, 6]], "points": ["0", "0"], "serving": 0, "status": "finished", "winner": 1}"#)
        );
    }
}
