//! How admin results look: aligned tables for people, JSON for scripts, RFC 3339 times.

use serde::Serialize;

use crate::accounts::admin::UserDetails;
use crate::clock::UnixSeconds;
use crate::store::{AuditEvent, User};

/// `2025-06-01T12:34:56Z` (RFC 3339 §5.6, UTC). Times before 1970 or after 9999 cannot be
/// written this way and are shown as plain seconds.
pub fn rfc3339(t: UnixSeconds) -> String {
    const MAX: UnixSeconds = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(0..=MAX).contains(&t) {
        return format!("@{t}");
    }
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 → proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days` (http://howardhinnant.github.io/date_algorithms.html).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A cell as printed: control characters escaped, so a stored value can never move the
/// cursor or recolour the operator's terminal.
pub fn clean(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect()
    } else {
        s.to_string()
    }
}

/// Columns separated by two spaces, each as wide as its widest cell; no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate().take(cols) {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            text.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Label/value lines, the labels padded to one width.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let pad = width - k.chars().count();
        out.push_str(&format!("{k}:{}  {}\n", " ".repeat(pad), clean(v)));
    }
    out
}

fn apps_text(user: &User) -> String {
    if user.apps.is_empty() {
        "-".into()
    } else {
        user.apps.iter().cloned().collect::<Vec<_>>().join(",")
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `user list` for people.
pub fn user_table(users: &[User]) -> String {
    if users.is_empty() {
        return "No users yet. Add one with `portcullis user add NAME --email E`.\n".into();
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.status.to_string(),
                yes_no(u.totp.is_some()).into(),
                apps_text(u),
                u.email.clone(),
                rfc3339(u.created_at),
            ]
        })
        .collect();
    table(
        &["NAME", "STATUS", "2FA", "APPS", "EMAIL", "CREATED"],
        &rows,
    )
}

/// One user as scripts see it (`user list --json`, `user show --json`).
#[derive(Debug, Serialize)]
pub struct UserJson {
    pub id: String,
    pub name: String,
    pub email: String,
    pub display_name: String,
    pub status: String,
    pub apps: Vec<String>,
    pub password_set: bool,
    pub two_factor: bool,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub two_factor_enrolled_at: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_failures: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<Option<String>>,
}

impl UserJson {
    pub fn new(u: &User) -> Self {
        UserJson {
            id: u.id.to_string(),
            name: u.name.clone(),
            email: u.email.clone(),
            display_name: u.display_name.clone(),
            status: u.status.to_string(),
            apps: u.apps.iter().cloned().collect(),
            password_set: u.password_hash.is_some(),
            two_factor: u.totp.is_some(),
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
            two_factor_enrolled_at: None,
            recent_failures: None,
            locked_until: None,
        }
    }

    pub fn detailed(d: &UserDetails) -> Self {
        UserJson {
            two_factor_enrolled_at: Some(d.user.totp.as_ref().map(|t| rfc3339(t.enrolled_at))),
            recent_failures: Some(d.recent_failures),
            locked_until: Some(d.locked_until.map(rfc3339)),
            ..UserJson::new(&d.user)
        }
    }
}

/// `user show` for people.
pub fn user_details(d: &UserDetails) -> String {
    let u = &d.user;
    let two_factor = match &u.totp {
        Some(t) => format!("enrolled since {}", rfc3339(t.enrolled_at)),
        None => "not set up: the next sign-in shows a QR code".into(),
    };
    let password = if u.password_hash.is_some() {
        "set"
    } else {
        "not set: chosen with the activation link"
    };
    let lock = match d.locked_until {
        Some(until) => format!(
            "locked until {} (`portcullis user enable {}` lifts it)",
            rfc3339(until),
            u.name
        ),
        None => "not locked".into(),
    };
    fields(&[
        ("Name", u.name.clone()),
        ("Display name", u.display_name.clone()),
        ("E-mail", u.email.clone()),
        ("Id", u.id.to_string()),
        ("Status", u.status.to_string()),
        ("Password", password.into()),
        ("2FA", two_factor),
        ("Apps", apps_text(u)),
        ("Created", rfc3339(u.created_at)),
        ("Last change", rfc3339(u.updated_at)),
        ("Failed sign-ins", d.recent_failures.to_string()),
        ("Sign-in lock", lock),
    ])
}

/// One audit event as scripts see it (`audit --json`).
#[derive(Debug, Serialize)]
pub struct AuditJson {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub user: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
    pub ip: Option<String>,
}

impl AuditJson {
    pub fn new(e: &AuditEvent) -> Self {
        AuditJson {
            at: rfc3339(e.at),
            actor: e.actor.clone(),
            action: e.action.clone(),
            user: e.user.clone(),
            outcome: e.outcome.clone(),
            detail: e.detail.clone(),
            ip: e.ip.clone(),
        }
    }
}

/// `audit` for people, newest first.
pub fn audit_table(events: &[AuditEvent]) -> String {
    if events.is_empty() {
        return "No audit events.\n".into();
    }
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                rfc3339(e.at),
                e.actor.clone(),
                e.action.clone(),
                dash(&e.user),
                e.outcome.clone(),
                dash(&e.ip),
                dash(&e.detail),
            ]
        })
        .collect();
    table(
        &["TIME", "ACTOR", "ACTION", "USER", "OUTCOME", "IP", "DETAIL"],
        &rows,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "@-1");
        assert_eq!(rfc3339(i64::MAX), format!("@{}", i64::MAX));
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        // Against a naive day counter: each day is the one after the previous.
        let mut prev = civil_from_days(-1);
        for day in 0..146_097 {
            let cur = civil_from_days(day);
            let next_day = (prev.0, prev.1, prev.2 + 1);
            let next_month = (prev.0, prev.1 + 1, 1);
            let next_year = (prev.0 + 1, 1, 1);
            assert!(
                cur == next_day || cur == next_month || cur == next_year,
                "{prev:?} → {cur:?}"
            );
            prev = cur;
        }
    }

    #[test]
    fn table_columns_line_up_and_lines_have_no_trailing_space() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["long value".into(), "x".into()],
                vec!["é".into(), "".into()],
            ],
        );
        assert_eq!(t, "A           BB\nlong value  x\né\n");
    }

    #[test]
    fn control_characters_in_cells_are_escaped() {
        let t = table(&["A"], &[vec!["evil\u{1b}[31mred\nline".into()]]);
        assert!(!t.contains('\u{1b}'));
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(t.contains("evil\\u{1b}[31mred\\nline"), "{t}");
    }

    #[test]
    fn fields_pad_labels() {
        assert_eq!(
            fields(&[("A", "1".into()), ("Long", "2".into())]),
            "A:     1\nLong:  2\n"
        );
    }
}
