//! A source's `synchronous_standby_names`, read with PostgreSQL 15's grammar (syncrep_gram.y):
//! `name, …` (the first one), `N (name, …)` or `FIRST N (name, …)` (the first N by priority),
//! `ANY N (name, …)` (a quorum of N). A name is an identifier, a number, `*`, or
//! double-quoted; Postgres matches it against application_name case-insensitively.
//! Detaching an import removes Strata's name and keeps every other standby the source had.

use anyhow::{bail, Result};

/// One standby name as the setting writes it, and what it means.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Name {
    written: String,
    value: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Name { name: Name, quoted: bool },
    Comma,
    Open,
    Close,
}

fn tokens(setting: &str) -> Result<Vec<Token>> {
    let mut out = Vec::new();
    let mut chars = setting.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            ',' => out.push(Token::Comma),
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            '*' => out.push(plain_name("*")),
            '"' => {
                let mut value = String::new();
                let mut closed = false;
                while let Some((i, c)) = chars.next() {
                    if c != '"' {
                        value.push(c);
                    } else if chars.peek().is_some_and(|&(_, n)| n == '"') {
                        chars.next();
                        value.push('"');
                    } else {
                        out.push(Token::Name {
                            name: Name {
                                written: setting[start..=i].to_string(),
                                value,
                            },
                            quoted: true,
                        });
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    bail!("synchronous_standby_names = {setting:?}: unterminated quoted name");
                }
            }
            c if c.is_alphanumeric() || c == '_' || !c.is_ascii() => {
                let mut end = start + c.len_utf8();
                while let Some(&(i, n)) = chars.peek() {
                    if !(n.is_alphanumeric() || n == '_' || n == '$' || !n.is_ascii()) {
                        break;
                    }
                    end = i + n.len_utf8();
                    chars.next();
                }
                out.push(plain_name(&setting[start..end]));
            }
            other => bail!("synchronous_standby_names = {setting:?}: unexpected {other:?}"),
        }
    }
    Ok(out)
}

fn plain_name(text: &str) -> Token {
    Token::Name {
        name: Name {
            written: text.to_string(),
            value: text.to_string(),
        },
        quoted: false,
    }
}

/// How many of the listed standbys a commit waits for, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Method {
    /// `a, b`: the first connected one.
    List,
    /// `N (…)`, `FIRST N (…)`, `ANY N (…)`; `keyword` is "", "FIRST " or "ANY ".
    Counted { keyword: &'static str, count: u32 },
}

/// A parsed setting.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Setting {
    method: Method,
    names: Vec<Name>,
}

fn unquoted_word(t: &Token) -> Option<&str> {
    match t {
        Token::Name {
            name,
            quoted: false,
        } => Some(name.value.as_str()),
        _ => None,
    }
}

fn parse(setting: &str) -> Result<Setting> {
    let toks = tokens(setting)?;
    let count = |t: &Token| unquoted_word(t).and_then(|w| w.parse::<u32>().ok());
    let keyword = |t: &Token| match unquoted_word(t) {
        Some(w) if w.eq_ignore_ascii_case("first") => Some("FIRST "),
        Some(w) if w.eq_ignore_ascii_case("any") => Some("ANY "),
        _ => None,
    };
    let (method, list) = match toks.as_slice() {
        [k, n, Token::Open, list @ .., Token::Close] if keyword(k).is_some() => {
            let Some(count) = count(n) else {
                bail!("synchronous_standby_names = {setting:?}: a count must follow FIRST/ANY")
            };
            let keyword = keyword(k).unwrap_or_default();
            (Method::Counted { keyword, count }, list)
        }
        [n, Token::Open, list @ .., Token::Close] if count(n).is_some() => {
            let count = count(n).unwrap_or_default();
            (Method::Counted { keyword: "", count }, list)
        }
        list => (Method::List, list),
    };
    let mut names = Vec::new();
    for (i, t) in list.iter().enumerate() {
        match (i % 2, t) {
            (0, Token::Name { name, .. }) => names.push(name.clone()),
            (1, Token::Comma) => {}
            _ => bail!("synchronous_standby_names = {setting:?}: not a list of standby names"),
        }
    }
    if list.len() % 2 == 0 && !list.is_empty() {
        bail!("synchronous_standby_names = {setting:?}: the list ends with a comma");
    }
    Ok(Setting { method, names })
}

/// Whether `setting` makes commits wait for the standby `app` (by name or `*`).
pub fn names_standby(setting: &str, app: &str) -> Result<bool> {
    Ok(parse(setting)?
        .names
        .iter()
        .any(|n| n.value == "*" || n.value.eq_ignore_ascii_case(app)))
}

/// The setting without `app`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Without {
    /// `app` is not named: nothing to change.
    Unchanged,
    Changed {
        value: String,
        /// A count that was lowered to the standbys that remain: (was, now).
        lowered: Option<(u32, u32)>,
    },
}

/// `setting` with every name matching `app` removed; a count larger than what remains is
/// lowered (commits would otherwise wait for ever), and an emptied list is `''`.
pub fn without(setting: &str, app: &str) -> Result<Without> {
    let parsed = parse(setting)?;
    let kept: Vec<&Name> = parsed
        .names
        .iter()
        .filter(|n| !n.value.eq_ignore_ascii_case(app))
        .collect();
    if kept.len() == parsed.names.len() {
        return Ok(Without::Unchanged);
    }
    let list = kept
        .iter()
        .map(|n| n.written.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let (value, lowered) = match parsed.method {
        _ if kept.is_empty() => (String::new(), None),
        Method::List => (list, None),
        Method::Counted { keyword, count } => {
            let left = u32::try_from(kept.len()).unwrap_or(u32::MAX);
            let now = count.min(left);
            let lowered = (now != count).then_some((count, now));
            (format!("{keyword}{now} ({list})"), lowered)
        }
    };
    Ok(Without::Changed { value, lowered })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(setting: &str) -> String {
        match without(setting, "strata").unwrap() {
            Without::Changed { value, .. } => value,
            Without::Unchanged => panic!("{setting:?} unchanged"),
        }
    }

    #[test]
    fn removes_strata_and_keeps_the_other_standbys() {
        assert_eq!(changed("strata"), "");
        assert_eq!(changed("  STRATA "), "");
        assert_eq!(changed("\"strata\""), "");
        assert_eq!(
            changed("s1, strata, \"Other \"\"q\"\"\""),
            "s1, \"Other \"\"q\"\"\""
        );
        assert_eq!(changed("FIRST 1 (strata, s1)"), "FIRST 1 (s1)");
        assert_eq!(changed("any 2 (s1, strata, s2)"), "ANY 2 (s1, s2)");
        assert_eq!(changed("1 (strata)"), "");
        assert_eq!(changed("*, strata"), "*");
    }

    #[test]
    fn a_count_above_the_remaining_standbys_is_lowered() {
        assert_eq!(
            without("ANY 2 (strata, s1)", "strata").unwrap(),
            Without::Changed {
                value: "ANY 1 (s1)".into(),
                lowered: Some((2, 1)),
            }
        );
    }

    #[test]
    fn a_setting_without_strata_is_unchanged() {
        for s in ["", "s1", "FIRST 2 (s1, s2)", "*", "\"strata2\"", "1"] {
            assert_eq!(without(s, "strata").unwrap(), Without::Unchanged, "{s:?}");
        }
    }

    #[test]
    fn names_standby_matches_like_postgres() {
        assert!(names_standby("FIRST 1 (Strata)", "strata").unwrap());
        assert!(names_standby("*", "strata").unwrap());
        assert!(!names_standby("stratax, s1", "strata").unwrap());
        assert!(!names_standby("", "strata").unwrap());
    }

    #[test]
    fn malformed_settings_are_errors_not_guesses() {
        for s in ["\"strata", "s1,", "a b", "ANY (s1)", "s1; DROP"] {
            assert!(without(s, "strata").is_err(), "{s:?}");
        }
    }
}
