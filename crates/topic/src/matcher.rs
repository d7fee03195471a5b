//! The topic matching rule, stated once for the whole project.

use crate::{TopicFilter, TopicName};

/// Whether `filter` matches the topic name `name` (MQTT 3.1.1 and 5.0 §4.7).
///
/// For a shared subscription only the part after `$share/{ShareName}/` is matched.
/// `+` matches exactly one level (which may be empty), `#` matches any number of levels
/// including none, so `sport/#` matches `sport` itself. A filter whose first level is a wildcard
/// does not match a name starting with `$` (MQTT-4.7.2-1). Levels are compared byte for byte,
/// without normalisation (MQTT-4.7.3-4).
///
/// ```
/// use rallymq_topic::{TopicFilter, TopicName, matches};
///
/// let name = TopicName::new("sport/tennis/player1").unwrap();
/// assert!(matches(&TopicFilter::new("sport/#").unwrap(), &name));
/// assert!(matches(&TopicFilter::new("sport/+/player1").unwrap(), &name));
/// assert!(!matches(&TopicFilter::new("#").unwrap(), &TopicName::new("$SYS/uptime").unwrap()));
/// ```
pub fn matches(filter: &TopicFilter, name: &TopicName) -> bool {
    matches_str(filter.filter(), name.as_str())
}

/// [`matches()`] on strings already known to be a valid filter (without any `$share/` prefix)
/// and a valid name.
pub(crate) fn matches_str(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    loop {
        match (filter_levels.next(), name_levels.next()) {
            // `#` is always last (the filter is valid) and also matches the parent level.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(wanted), Some(level)) if wanted == level => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic name matches both filters (for shared subscriptions, the parts after
/// `$share/{ShareName}/`): `a/+` and `+/b` overlap (on `a/b`), `a/#` and `a` overlap, `#` and
/// `$SYS/x` do not (MQTT-4.7.2-1).
///
/// ```
/// use rallymq_topic::{TopicFilter, overlaps};
///
/// let filter = |text: &str| TopicFilter::new(text).unwrap();
/// assert!(overlaps(&filter("a/+"), &filter("+/b")));
/// assert!(overlaps(&filter("sport/#"), &filter("sport")));
/// assert!(!overlaps(&filter("a/+"), &filter("b/#")));
/// assert!(!overlaps(&filter("#"), &filter("$SYS/uptime")));
/// ```
pub fn overlaps(first: &TopicFilter, second: &TopicFilter) -> bool {
    let (first, second) = (first.filter(), second.filter());
    // A name starting with `$` is matched only by filters whose first level is literal.
    let wildcard_first = |filter: &str| filter.starts_with(['+', '#']);
    if (first.starts_with('$') && wildcard_first(second))
        || (second.starts_with('$') && wildcard_first(first))
    {
        return false;
    }
    let mut first_levels = first.split('/');
    let mut second_levels = second.split('/');
    // Whether the common name so far is one empty level: the empty name, which is not one.
    let mut empty_so_far = false;
    let mut at_start = true;
    loop {
        match (first_levels.next(), second_levels.next()) {
            // `#` as the parent level of a name that would be empty.
            (None, Some("#")) | (Some("#"), None) if empty_so_far => return false,
            // `#` is last and also matches the parent level: whatever the other has from here
            // on, one name matches both.
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (Some(one), Some(other)) if one == "+" || other == "+" || one == other => {
                empty_so_far = at_start && (one.is_empty() || other.is_empty());
                at_start = false;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(filter: &str, name: &str) -> bool {
        matches(
            &TopicFilter::new(filter).unwrap(),
            &TopicName::new(name).unwrap(),
        )
    }

    // The non-normative examples of MQTT 3.1.1 §4.7.1.2 and 5.0 §4.7.1.2, with the
    // normative statement each one illustrates.
    #[test]
    fn mqtt_4_7_1_1_multi_level_wildcard_matches_parent_and_any_number_of_children() {
        assert!(check("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(check(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(check(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(check("sport/#", "sport"));
        assert!(check("#", "sport/tennis/player1"));
        assert!(check("#", "/"));
        assert!(!check("sport/tennis/player1/#", "sport/tennis/player2"));
        assert!(!check("sport/tennis/player1/#", "sport/tennis"));
    }

    #[test]
    fn mqtt_4_7_1_2_single_level_wildcard_fills_whole_level() {
        assert!(check("sport/tennis/+", "sport/tennis/player1"));
        assert!(check("sport/tennis/+", "sport/tennis/player2"));
        assert!(!check("sport/tennis/+", "sport/tennis/player1/ranking"));
        // "sport/+" does not match "sport" but it does match "sport/".
        assert!(!check("sport/+", "sport"));
        assert!(check("sport/+", "sport/"));
        assert!(check("+/+", "/finance"));
        assert!(check("/+", "/finance"));
        assert!(!check("+", "/finance"));
        assert!(check("+/tennis/#", "sport/tennis/player1"));
        assert!(check("sport/+/player1", "sport/tennis/player1"));
        assert!(!check("sport/+/player1", "sport/tennis/player2"));
    }

    #[test]
    fn mqtt_4_7_2_1_wildcard_first_level_does_not_match_dollar_topics() {
        assert!(!check("#", "$SYS/broker/uptime"));
        assert!(!check("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(check("$SYS/#", "$SYS/monitor/Clients"));
        assert!(check("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(check("$SYS/#", "$SYS"));
        // Only a leading `$` is special.
        assert!(check("+/$SYS", "a/$SYS"));
        assert!(check("#", "a/$SYS"));
    }

    #[test]
    fn mqtt_4_7_3_4_matching_is_exact_without_normalisation() {
        assert!(!check("ACCOUNTS", "Accounts"));
        assert!(check("Accounts payable", "Accounts payable"));
        assert!(!check("Accounts payable", "Accounts  payable"));
        assert!(check("/finance", "/finance"));
        assert!(!check("/finance", "finance"));
        // "é" precomposed (U+00E9) and decomposed (e + U+0301) are different topics.
        assert!(!check("caf\u{e9}", "cafe\u{301}"));
    }

    #[test]
    fn mqtt_4_7_3_1_empty_levels_are_levels() {
        assert!(check("a//b", "a//b"));
        assert!(!check("a//b", "a/b"));
        assert!(check("a/+/b", "a//b"));
        assert!(check("+", "x"));
        assert!(check("+/+/+", "//"));
        assert!(!check("+/+", "//"));
        assert!(check("a/#", "a/"));
        assert!(check("a/#", "a//"));
    }

    #[test]
    fn mqtt_4_8_2_1_shared_filter_matches_with_its_filter_part() {
        assert!(check("$share/g/sport/#", "sport/tennis"));
        assert!(!check("$share/g/sport/#", "$share/g/sport/tennis"));
        assert!(!check("$share/g/#", "$SYS/x"));
        assert!(check("$share/g/$SYS/#", "$SYS/x"));
    }

    /// Every pair of filters of up to three levels over a small alphabet: they overlap exactly
    /// when a name of up to four levels (the alphabet, and a level neither names) matches both.
    #[test]
    fn mqtt_4_7_1_2_overlaps_agrees_with_a_search_for_a_common_name() {
        fn sequences(alphabet: &[&str], most: usize) -> Vec<String> {
            let mut all: Vec<String> = alphabet.iter().map(|level| level.to_string()).collect();
            let mut last = all.clone();
            for _ in 1..most {
                last = last
                    .iter()
                    .flat_map(|prefix| {
                        alphabet
                            .iter()
                            .map(move |level| format!("{prefix}/{level}"))
                    })
                    .collect();
                all.extend(last.iter().cloned());
            }
            all
        }
        let filters: Vec<TopicFilter> = sequences(&["a", "+", "#", "$s", ""], 3)
            .into_iter()
            .filter_map(|text| TopicFilter::new(text).ok())
            .collect();
        let names: Vec<String> = sequences(&["a", "$s", "", "c"], 4)
            .into_iter()
            .filter(|name| TopicName::new(name.as_str()).is_ok())
            .collect();
        for first in &filters {
            for second in &filters {
                let common = names.iter().any(|name| {
                    matches_str(first.filter(), name) && matches_str(second.filter(), name)
                });
                assert_eq!(
                    overlaps(first, second),
                    common,
                    "{} and {}",
                    first.filter(),
                    second.filter()
                );
            }
        }
    }
}
