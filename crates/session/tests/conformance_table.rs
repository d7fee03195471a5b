//! Checks `CONFORMANCE.md`: every normative statement of MQTT 3.1.1 and 5.0 (the ids in
//! `../shared/spec/` beside the repository) has exactly one row, traced to tests that exist and
//! are named after it, or explained. Each specification is checked by a test of its own, so one
//! table can be complete while the other is being filled in.
//!
//! The checker's own parsing is tested below on small inline tables, so that it cannot pass a
//! table it should refuse.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// One row of a statement table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    /// Line in the Markdown file, from 1.
    line: usize,
    id: String,
    /// `path::function` entries.
    tests: Vec<String>,
    reason: String,
}

/// The rows of the table under the heading `## {section}`, or why they cannot be read.
fn parse_section(markdown: &str, section: &str) -> Result<Vec<Row>, String> {
    let heading = format!("## {section}");
    let mut lines = markdown.lines().enumerate();
    if !lines.any(|(_, line)| line.trim_end() == heading) {
        return Err(format!("no `{heading}` heading"));
    }
    let mut rows = Vec::new();
    let mut seen_header = false;
    for (index, line) in lines {
        let line_number = index + 1;
        let line = line.trim();
        if line.starts_with("## ") {
            break;
        }
        if !line.starts_with('|') {
            continue;
        }
        let cells = split_cells(line);
        if !seen_header {
            // The header row, then the |---| separator.
            seen_header = true;
            continue;
        }
        if cells.iter().all(|cell| {
            cell.chars()
                .all(|c| c == '-' || c == ':' || c.is_whitespace())
        }) {
            continue;
        }
        if cells.len() != 3 {
            return Err(format!(
                "line {line_number}: {} cells, expected 3 (statement, tested by, why not)",
                cells.len()
            ));
        }
        let tests = cells[1]
            .split("<br>")
            .map(unquote)
            .filter(|entry| !entry.is_empty())
            .map(str::to_owned)
            .collect();
        rows.push(Row {
            line: line_number,
            id: unquote(&cells[0]).to_owned(),
            tests,
            reason: cells[2].trim().to_owned(),
        });
    }
    if !seen_header {
        return Err(format!("no table under `{heading}`"));
    }
    Ok(rows)
}

/// The cells of a table row `| a | b | c |`; `\|` stays inside a cell.
fn split_cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                cells.last_mut().expect("one cell at least").push('|');
            }
            '|' => cells.push(String::new()),
            _ => cells.last_mut().expect("one cell at least").push(c),
        }
    }
    cells.iter().map(|cell| cell.trim().to_owned()).collect()
}

/// A cell's text without surrounding blanks and backticks.
fn unquote(text: &str) -> &str {
    text.trim().trim_matches('`').trim()
}

/// `MQTT-3.1.2-4` -> `mqtt_3_1_2_4`.
fn slug(id: &str) -> String {
    id.to_ascii_lowercase().replace(['.', '-'], "_")
}

/// Whether `name` carries `slug` as a whole part: `mqtt_3_1_2_1` is in
/// `v311_mqtt_3_1_2_1_x` but not in `mqtt_3_1_2_13_x`.
fn carries_slug(name: &str, slug: &str) -> bool {
    name.match_indices(slug).any(|(at, _)| {
        let before = name[..at].chars().next_back();
        let after = name[at + slug.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Where a named test stands in its file's text.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Test,
    Ignored,
    /// The function is there but is not marked as a test.
    NotATest,
    Missing,
}

/// Looks for test `name` in `text`, a file with extension `extension`.
fn find_test(text: &str, extension: &str, name: &str) -> Found {
    match extension {
        "rs" => find_rust_test(text, name),
        "py" => {
            if find_word_after(text, "def ", name).is_some() {
                Found::Test
            } else {
                Found::Missing
            }
        }
        "js" | "mjs" => {
            if has_js_test(text, name) {
                Found::Test
            } else {
                Found::Missing
            }
        }
        _ => Found::Missing,
    }
}

/// The byte offset of `keyword` + `name` in `text` where `name` is a whole identifier.
fn find_word_after(text: &str, keyword: &str, name: &str) -> Option<usize> {
    let needle = format!("{keyword}{name}");
    text.match_indices(&needle).map(|(at, _)| at).find(|&at| {
        let before = text[..at].chars().next_back();
        let after = text[at + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// A Rust test: `fn name` whose attributes (the lines above it, past doc comments) include a
/// test attribute (`#[test]`, `#[tokio::test]`, ...).
fn find_rust_test(text: &str, name: &str) -> Found {
    let Some(at) = find_word_after(text, "fn ", name) else {
        return Found::Missing;
    };
    // The start of the `fn` line (`async `, or an attribute on the same line).
    let own_line = text[..at].rsplit('\n').next().unwrap_or_default();
    let mut is_test = own_line.contains("#[test]") || own_line.contains("::test]");
    let mut ignored = own_line.contains("#[ignore");
    for line in text[..at - own_line.len()].lines().rev() {
        let line = line.trim();
        if line.starts_with("#[") {
            is_test |= line == "#[test]" || line.contains("::test]") || line.contains("::test(");
            ignored |= line.starts_with("#[ignore");
        } else if !(line.starts_with("//") || line.is_empty()) {
            break;
        }
    }
    match (is_test, ignored) {
        (true, true) => Found::Ignored,
        (true, false) => Found::Test,
        (false, _) => Found::NotATest,
    }
}

/// Whether `text` has `test(` or `it(` called with `name` quoted as its first argument.
fn has_js_test(text: &str, name: &str) -> bool {
    ["test(", "it("].iter().any(|call| {
        text.match_indices(call).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
                return false;
            }
            let rest = text[at + call.len()..].trim_start();
            let Some(quote) = rest
                .chars()
                .next()
                .filter(|c| matches!(c, '\'' | '"' | '`'))
            else {
                return false;
            };
            rest[1..].split(quote).next() == Some(name)
        })
    })
}

/// Every problem with `rows` as the trace of `ids` (the specification's statement ids, in
/// order), reading test files through `read` (a path from the repository root to its text).
fn check(rows: &[Row], ids: &[String], read: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_id: HashMap<&str, Vec<usize>> = HashMap::new();
    for row in rows {
        by_id.entry(&row.id).or_default().push(row.line);
    }
    for id in ids {
        match by_id.get(id.as_str()).map(Vec::as_slice) {
            None => problems.push(format!("{id}: no row")),
            Some([_]) => {}
            Some(lines) => problems.push(format!("{id}: {} rows (lines {lines:?})", lines.len())),
        }
    }
    let mut files: HashMap<String, Option<String>> = HashMap::new();
    for row in rows {
        let at = format!("line {} ({})", row.line, row.id);
        if !ids.contains(&row.id) {
            problems.push(format!("{at}: not a statement id of this specification"));
            continue;
        }
        if row.tests.is_empty() && row.reason.is_empty() {
            problems.push(format!("{at}: neither a test nor a reason"));
        }
        let slug = slug(&row.id);
        for entry in &row.tests {
            let Some((path, function)) = entry.rsplit_once("::") else {
                problems.push(format!("{at}: `{entry}` is not `path::function`"));
                continue;
            };
            if !carries_slug(function, &slug) {
                problems.push(format!(
                    "{at}: `{function}` is not named after the statement (`{slug}`)"
                ));
            }
            let text = files
                .entry(path.to_owned())
                .or_insert_with(|| read(path))
                .as_deref();
            let Some(text) = text else {
                problems.push(format!("{at}: `{path}` does not exist"));
                continue;
            };
            let extension = Path::new(path)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default();
            match find_test(text, extension, function) {
                Found::Test => {}
                Found::Ignored => problems.push(format!(
                    "{at}: `{function}` in `{path}` is ignored, so it checks nothing"
                )),
                Found::NotATest => problems.push(format!(
                    "{at}: `{function}` in `{path}` is not marked as a test"
                )),
                Found::Missing => problems.push(format!("{at}: no test `{function}` in `{path}`")),
            }
        }
    }
    problems
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The statement ids of `file` in `../shared/spec/`, in order.
fn spec_ids(file: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/spec");
    let path = dir.join(file);
    let text = fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "cannot read the statement ids {} ({error}): the conformance check needs the shared \
             spec directory beside the repository (`../shared/spec/`, as CI has it)",
            path.display()
        )
    });
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks the real table's `section` against the ids in `ids_file`, failing with every problem.
fn assert_traced(section: &str, ids_file: &str) {
    let ids = spec_ids(ids_file);
    let table = Path::new(env!("CARGO_MANIFEST_DIR")).join("CONFORMANCE.md");
    let markdown = fs::read_to_string(&table)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", table.display()));
    let rows = parse_section(&markdown, section)
        .unwrap_or_else(|error| panic!("CONFORMANCE.md, {section}: {error}"));
    let root = repository_root();
    let problems = check(&rows, &ids, &|path| {
        fs::read_to_string(root.join(path)).ok()
    });
    if !problems.is_empty() {
        let mut report = format!(
            "CONFORMANCE.md, {section}: {} problem(s) with the trace of the {} statements:\n",
            problems.len(),
            ids.len()
        );
        for problem in &problems {
            let _ = writeln!(report, "  - {problem}");
        }
        panic!("{report}");
    }
}

#[test]
fn mqtt_3_1_1_every_statement_is_traced() {
    assert_traced("MQTT 3.1.1", "mqtt-3.1.1-statement-ids.txt");
}

#[test]
fn mqtt_5_0_every_statement_is_traced() {
    assert_traced("MQTT 5.0", "mqtt-5.0-statement-ids.txt");
}

// ------------------------------------------------------------------ the checker itself

const HEADER: &str = "| Statement | Tested by | Why not, and where enforced |\n|---|---|---|\n";

fn table(rows: &str) -> String {
    format!(
        "# Title\n\n## MQTT 3.1.1\n\n{HEADER}{rows}\n<!-- a comment -->\n\n## MQTT 5.0\n\n{HEADER}| MQTT-9.9.9-9 | | other section |\n"
    )
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|id| (*id).to_owned()).collect()
}

/// A repository of one Rust file, one Python file and one JavaScript file.
fn files(path: &str) -> Option<String> {
    match path {
        "crates/x/tests/a.rs" => Some(
            "#[test]\nfn mqtt_1_2_3_1_checks_it() {}\n\n/// Doc.\n#[tokio::test]\nasync fn v311_mqtt_1_2_3_2_too() {}\n\nfn mqtt_1_2_3_3_a_helper() {}\n\n#[test]\n#[ignore = \"later\"]\nfn mqtt_1_2_3_4_ignored() {}\n"
                .to_owned(),
        ),
        "tests/b.py" => Some("def mqtt_1_2_3_1_in_python():\n    pass\n".to_owned()),
        "web/c.mjs" => Some("test('mqtt_1_2_3_1 in js', () => {});\nit(\"mqtt_1_2_3_2 too\", f);\n".to_owned()),
        _ => None,
    }
}

fn problems(rows: &str, spec: &[&str]) -> Vec<String> {
    let rows = parse_section(&table(rows), "MQTT 3.1.1").expect("parses");
    check(&rows, &ids(spec), &files)
}

#[test]
fn checker_reads_rows_cells_and_several_tests() {
    let markdown = table(
        "| MQTT-1.2.3-1 | `crates/x/tests/a.rs::mqtt_1_2_3_1_checks_it`<br>tests/b.py::mqtt_1_2_3_1_in_python | |\n| `MQTT-1.2.3-2` | | a reason with a \\| bar |\n",
    );
    let rows = parse_section(&markdown, "MQTT 3.1.1").unwrap();
    assert_eq!(
        rows,
        vec![
            Row {
                line: 7,
                id: "MQTT-1.2.3-1".into(),
                tests: vec![
                    "crates/x/tests/a.rs::mqtt_1_2_3_1_checks_it".into(),
                    "tests/b.py::mqtt_1_2_3_1_in_python".into()
                ],
                reason: String::new(),
            },
            Row {
                line: 8,
                id: "MQTT-1.2.3-2".into(),
                tests: vec![],
                reason: "a reason with a | bar".into(),
            },
        ]
    );
    let other = parse_section(&markdown, "MQTT 5.0").unwrap();
    assert_eq!(other.len(), 1, "sections stay apart: {other:?}");
}

#[test]
fn checker_passes_a_complete_table() {
    let found = problems(
        "| MQTT-1.2.3-1 | crates/x/tests/a.rs::mqtt_1_2_3_1_checks_it<br>tests/b.py::mqtt_1_2_3_1_in_python<br>web/c.mjs::mqtt_1_2_3_1 in js | |\n| MQTT-1.2.3-2 | crates/x/tests/a.rs::v311_mqtt_1_2_3_2_too<br>web/c.mjs::mqtt_1_2_3_2 too | |\n| MQTT-1.2.3-3 | | Only constrains the peer; enforced in `x.rs` `f`. |\n",
        &["MQTT-1.2.3-1", "MQTT-1.2.3-2", "MQTT-1.2.3-3"],
    );
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn checker_reports_a_missing_id_a_duplicate_and_an_unknown_id() {
    let found = problems(
        "| MQTT-1.2.3-1 | | r |\n| MQTT-1.2.3-1 | | r |\n| MQTT-7.7.7-7 | | r |\n",
        &["MQTT-1.2.3-1", "MQTT-1.2.3-2"],
    );
    assert_eq!(
        found,
        vec![
            "MQTT-1.2.3-1: 2 rows (lines [7, 8])".to_owned(),
            "MQTT-1.2.3-2: no row".to_owned(),
            "line 9 (MQTT-7.7.7-7): not a statement id of this specification".to_owned(),
        ]
    );
}

#[test]
fn checker_reports_tests_that_do_not_exist_or_do_not_count() {
    let found = problems(
        concat!(
            "| MQTT-1.2.3-1 | crates/x/tests/a.rs::mqtt_1_2_3_1_gone<br>crates/x/tests/nope.rs::mqtt_1_2_3_1_x<br>web/c.mjs::mqtt_1_2_3_1 not there<br>no_separator | |\n",
            "| MQTT-1.2.3-3 | crates/x/tests/a.rs::mqtt_1_2_3_3_a_helper | |\n",
            "| MQTT-1.2.3-4 | crates/x/tests/a.rs::mqtt_1_2_3_4_ignored | |\n",
            "| MQTT-1.2.3-5 | | |\n",
        ),
        &[
            "MQTT-1.2.3-1",
            "MQTT-1.2.3-3",
            "MQTT-1.2.3-4",
            "MQTT-1.2.3-5",
        ],
    );
    assert_eq!(
        found,
        vec![
            "line 7 (MQTT-1.2.3-1): no test `mqtt_1_2_3_1_gone` in `crates/x/tests/a.rs`"
                .to_owned(),
            "line 7 (MQTT-1.2.3-1): `crates/x/tests/nope.rs` does not exist".to_owned(),
            "line 7 (MQTT-1.2.3-1): no test `mqtt_1_2_3_1 not there` in `web/c.mjs`".to_owned(),
            "line 7 (MQTT-1.2.3-1): `no_separator` is not `path::function`".to_owned(),
            "line 8 (MQTT-1.2.3-3): `mqtt_1_2_3_3_a_helper` in `crates/x/tests/a.rs` is not marked as a test".to_owned(),
            "line 9 (MQTT-1.2.3-4): `mqtt_1_2_3_4_ignored` in `crates/x/tests/a.rs` is ignored, so it checks nothing".to_owned(),
            "line 10 (MQTT-1.2.3-5): neither a test nor a reason".to_owned(),
        ]
    );
}

#[test]
fn checker_requires_the_whole_slug_in_the_test_name() {
    // mqtt_1_2_3_1 is a prefix of mqtt_1_2_3_12 but not its statement.
    let found = problems(
        "| MQTT-1.2.3-12 | crates/x/tests/a.rs::mqtt_1_2_3_1_checks_it | |\n",
        &["MQTT-1.2.3-12"],
    );
    assert_eq!(
        found,
        vec![
            "line 7 (MQTT-1.2.3-12): `mqtt_1_2_3_1_checks_it` is not named after the statement (`mqtt_1_2_3_12`)"
                .to_owned()
        ]
    );
    assert!(carries_slug("v311_mqtt_3_1_2_1_x", "mqtt_3_1_2_1"));
    assert!(carries_slug("mqtt_3_1_2_1", "mqtt_3_1_2_1"));
    assert!(!carries_slug("mqtt_3_1_2_13_x", "mqtt_3_1_2_1"));
    assert!(!carries_slug("xmqtt_3_1_2_1", "mqtt_3_1_2_1"));
    assert_eq!(slug("MQTT-3.10.4-6"), "mqtt_3_10_4_6");
}

#[test]
fn checker_refuses_a_malformed_table() {
    assert_eq!(
        parse_section("## MQTT 3.1.1\n\ntext\n", "MQTT 3.1.1"),
        Err("no table under `## MQTT 3.1.1`".to_owned())
    );
    assert_eq!(
        parse_section("## MQTT 5.0\n", "MQTT 3.1.1"),
        Err("no `## MQTT 3.1.1` heading".to_owned())
    );
    assert_eq!(
        parse_section(&table("| MQTT-1.2.3-1 | two cells |\n"), "MQTT 3.1.1"),
        Err("line 7: 2 cells, expected 3 (statement, tested by, why not)".to_owned())
    );
}
