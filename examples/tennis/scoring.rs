//! Tennis scoring, point by point: games (0, 15, 30, 40, deuce, advantage), sets won 6 games
//! with a two-game lead or 7-6 through a tie-break at 6-6 (first to 7 points, two clear), and
//! a match won by the first player to take a majority of the sets. Pure logic: no IO, no clock.

/// One player: 0 or 1.
pub type Player = usize;

/// A match in play or finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// Games per set, oldest first; the last entry is the set in play (or the final set).
    sets: Vec<[u32; 2]>,
    /// Points in the current game, or in the tie-break.
    points: [u32; 2],
    /// Who serves the current point.
    serving: Player,
    /// Who served the first point of the current tie-break, while one is being played.
    tiebreak_server: Option<Player>,
    /// Sets needed to win: 2 in a best of three, 3 in a best of five.
    sets_to_win: u32,
    winner: Option<Player>,
}

impl Match {
    /// A new match, best of `best_of` sets (3 or 5), `first_server` serving.
    pub fn new(best_of: u32, first_server: Player) -> Self {
        Self {
            sets: vec![[0, 0]],
            points: [0, 0],
            serving: first_server % 2,
            tiebreak_server: None,
            sets_to_win: best_of / 2 + 1,
            winner: None,
        }
    }

    /// Games per set; the last entry is the set in play.
    pub fn sets(&self) -> &[[u32; 2]] {
        &self.sets
    }

    /// Who serves the next point.
    pub fn serving(&self) -> Player {
        self.serving
    }

    /// The winner, once the match is over.
    pub fn winner(&self) -> Option<Player> {
        self.winner
    }

    /// Whether the current game is a tie-break.
    pub fn in_tiebreak(&self) -> bool {
        self.tiebreak_server.is_some()
    }

    /// The points of the current game as a scoreboard shows them: "0", "15", "30", "40" and
    /// "AD" in a game (deuce is "40", "40"), the point counts in a tie-break.
    pub fn points(&self) -> [String; 2] {
        let [a, b] = self.points;
        if self.in_tiebreak() {
            return [a.to_string(), b.to_string()];
        }
        if a >= 3 && b >= 3 {
            return match a.cmp(&b) {
                std::cmp::Ordering::Equal => ["40".into(), "40".into()],
                std::cmp::Ordering::Greater => ["AD".into(), "40".into()],
                std::cmp::Ordering::Less => ["40".into(), "AD".into()],
            };
        }
        let call = |p: u32| ["0", "15", "30", "40"][p.min(3) as usize].to_owned();
        [call(a), call(b)]
    }

    /// `player` wins a point. Nothing happens once the match is over.
    pub fn point(&mut self, player: Player) {
        if self.winner.is_some() {
            return;
        }
        let player = player % 2;
        let other = 1 - player;
        self.points[player] += 1;
        let won = self.points[player];
        let lead = won.saturating_sub(self.points[other]);
        if let Some(first) = self.tiebreak_server {
            if won >= 7 && lead >= 2 {
                self.game_won(player);
                // The player who received first in the tie-break serves the next game.
                self.serving = 1 - first;
            } else {
                // The first server serves one point, then each serves two in turn.
                let played = self.points[0] + self.points[1];
                self.serving = if played.div_ceil(2) % 2 == 0 {
                    first
                } else {
                    1 - first
                };
            }
        } else if won >= 4 && lead >= 2 {
            self.game_won(player);
            self.serving = 1 - self.serving;
        }
    }

    fn game_won(&mut self, player: Player) {
        let other = 1 - player;
        self.points = [0, 0];
        let tiebreak = self.tiebreak_server.take().is_some();
        let set = self
            .sets
            .last_mut()
            .expect("a match always has a set in play");
        set[player] += 1;
        let (mine, theirs) = (set[player], set[other]);
        let set_won = tiebreak || (mine >= 6 && mine >= theirs + 2);
        if !set_won {
            if mine == 6 && theirs == 6 {
                // The player due to serve the next game serves first in the tie-break; the
                // caller flips `serving` after this returns, so remember the other one.
                self.tiebreak_server = Some(self.serving_after_game());
            }
            return;
        }
        let sets_won = self
            .sets
            .iter()
            .filter(|games| games[player] > games[other])
            .count() as u32;
        if sets_won >= self.sets_to_win {
            self.winner = Some(player);
        } else {
            self.sets.push([0, 0]);
        }
    }

    /// Who serves the game after the one just finished (not a tie-break).
    fn serving_after_game(&self) -> Player {
        1 - self.serving
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(m: &mut Match, player: Player, n: u32) {
        for _ in 0..n {
            m.point(player);
        }
    }

    fn game(m: &mut Match, player: Player) {
        points(m, player, 4);
    }

    fn shown(m: &Match) -> [String; 2] {
        m.points()
    }

    #[test]
    fn points_in_a_game() {
        let mut m = Match::new(3, 0);
        assert_eq!(shown(&m), ["0", "0"]);
        m.point(0);
        assert_eq!(shown(&m), ["15", "0"]);
        m.point(1);
        m.point(0);
        assert_eq!(shown(&m), ["30", "15"]);
        m.point(0);
        assert_eq!(shown(&m), ["40", "15"]);
        m.point(0);
        assert_eq!(m.sets(), [[1, 0]]);
        assert_eq!(shown(&m), ["0", "0"]);
        assert_eq!(m.serving(), 1, "the serve changes after each game");
    }

    #[test]
    fn deuce_and_advantage() {
        let mut m = Match::new(3, 0);
        points(&mut m, 0, 3);
        points(&mut m, 1, 3);
        assert_eq!(shown(&m), ["40", "40"], "deuce");
        m.point(1);
        assert_eq!(shown(&m), ["40", "AD"]);
        m.point(0);
        assert_eq!(shown(&m), ["40", "40"], "back to deuce");
        m.point(0);
        assert_eq!(shown(&m), ["AD", "40"]);
        assert_eq!(m.sets(), [[0, 0]], "advantage does not win the game");
        m.point(0);
        assert_eq!(m.sets(), [[1, 0]], "advantage and the next point win it");
    }

    #[test]
    fn a_set_needs_six_games_and_a_two_game_lead() {
        let mut m = Match::new(3, 0);
        for _ in 0..5 {
            game(&mut m, 0);
            game(&mut m, 1);
        }
        assert_eq!(m.sets(), [[5, 5]]);
        game(&mut m, 0);
        assert_eq!(m.sets(), [[6, 5]], "6-5 is not a set");
        game(&mut m, 0);
        assert_eq!(m.sets(), [[7, 5], [0, 0]], "7-5 is");
        let mut m = Match::new(3, 0);
        for _ in 0..6 {
            game(&mut m, 0);
        }
        assert_eq!(m.sets(), [[6, 0], [0, 0]]);
    }

    #[test]
    fn tie_break_at_six_all() {
        let mut m = Match::new(3, 0);
        for _ in 0..6 {
            game(&mut m, 0);
            game(&mut m, 1);
        }
        assert_eq!(m.sets(), [[6, 6]]);
        assert!(m.in_tiebreak());
        // Player 0 served the first game, so after 12 games player 0 serves again.
        assert_eq!(m.serving(), 0);
        m.point(1);
        assert_eq!(shown(&m), ["0", "1"], "tie-break points are counted");
        assert_eq!(m.serving(), 1, "one point, then two each");
        m.point(1);
        assert_eq!(m.serving(), 1);
        m.point(0);
        assert_eq!(m.serving(), 0);
        points(&mut m, 0, 5);
        points(&mut m, 1, 4);
        assert_eq!(shown(&m), ["6", "6"]);
        m.point(0);
        assert_eq!(
            m.sets(),
            [[6, 6]],
            "7-6 in a tie-break needs a two-point lead"
        );
        assert_eq!(shown(&m), ["7", "6"]);
        m.point(0);
        assert_eq!(
            m.sets(),
            [[7, 6], [0, 0]],
            "8-6 wins the tie-break and the set"
        );
        assert!(!m.in_tiebreak());
        assert_eq!(shown(&m), ["0", "0"]);
        assert_eq!(
            m.serving(),
            1,
            "who received first in the tie-break serves next"
        );
    }

    #[test]
    fn the_match_is_won_with_a_majority_of_sets() {
        let mut m = Match::new(3, 1);
        for _ in 0..6 {
            game(&mut m, 0);
        }
        for _ in 0..6 {
            game(&mut m, 1);
        }
        assert_eq!(m.sets(), [[6, 0], [0, 6], [0, 0]]);
        assert_eq!(m.winner(), None);
        for _ in 0..6 {
            game(&mut m, 1);
        }
        assert_eq!(
            m.sets(),
            [[6, 0], [0, 6], [0, 6]],
            "no new set after the last"
        );
        assert_eq!(m.winner(), Some(1));
        let before = m.clone();
        m.point(0);
        assert_eq!(m, before, "a finished match takes no more points");

        let mut m = Match::new(5, 0);
        for _ in 0..18 {
            game(&mut m, 0);
        }
        assert_eq!(m.winner(), Some(0), "three sets in a best of five");
        assert_eq!(m.sets().len(), 3);
    }
}
