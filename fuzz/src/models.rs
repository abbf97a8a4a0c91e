//! Reference models written independently of the library, shared by the property tests
//! (tests/properties.rs includes this file) and the fuzz targets (through this crate).

use etha_tensor_bus::rank::{self, parse_integer, Method};

pub const WS: &[u8] = b" \t\n\x0b\x0c\r";

/// The strict integer grammar, written independently of `rank::parse_integer`: ASCII
/// whitespace, an optional sign, one or more ASCII digits, ASCII whitespace; fits in i64.
pub fn parse_integer_model(text: &[u8]) -> Option<i64> {
    let is_ws = |b: &u8| WS.contains(b);
    let start = text.iter().position(|b| !is_ws(b)).unwrap_or(text.len());
    let end = text.iter().rposition(|b| !is_ws(b)).map_or(start, |i| i + 1);
    let body = &text[start..end];
    let (sign, digits) = match body.split_first() {
        Some((b'-', rest)) => (-1i128, rest),
        Some((b'+', rest)) => (1, rest),
        _ => (1, body),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = &digits[digits.iter().position(|&d| d != b'0').unwrap_or(digits.len())..];
    if significant.len() > 19 {
        return None;
    }
    let magnitude: i128 = significant.iter().fold(0, |acc, &d| acc * 10 + i128::from(d - b'0'));
    i64::try_from(sign * magnitude).ok()
}

/// `rank::parse_integer` agrees with the model, and what it parses prints back to itself.
pub fn check_parse_integer(text: &[u8]) {
    let got = parse_integer(text);
    assert_eq!(got, parse_integer_model(text), "{:?}", String::from_utf8_lossy(text));
    if let Some(v) = got {
        assert_eq!(parse_integer(v.to_string().as_bytes()), Some(v));
    }
}

pub const VARS: [&str; 4] = [rank::AGENT_RANK, rank::RANK, rank::AGENT_RANK_OFFSET, rank::LOCAL_RANK];

pub type Resolved = (i64, i64, Option<i64>, i32, Method);

/// The outcome `rank::resolve` must have: `Ok` with its fields, or `Err` with the variables at
/// fault (the message names one of them, whichever the order of the checks finds first).
pub fn resolve_model(vars: &[Option<Vec<u8>>; 4]) -> Result<Resolved, Vec<&'static str>> {
    let [agent, rank, offset, local] = vars;
    let parsed = |v: &Option<Vec<u8>>| v.as_ref().map(|b| parse_integer_model(b));
    let mut culprits = Vec::new();
    let agent_rank = match parsed(agent) {
        Some(None) => {
            culprits.push(rank::AGENT_RANK);
            None
        }
        Some(Some(a)) if a < 0 => {
            culprits.push(rank::AGENT_RANK);
            None
        }
        v => v.flatten(),
    };
    let global = match parsed(rank) {
        Some(Some(r)) => Some(r),
        _ => {
            culprits.push(rank::RANK);
            None
        }
    };
    let local_rank = match parsed(local) {
        None => Some(0),
        Some(Some(l)) if (0..=i64::from(i32::MAX)).contains(&l) => Some(l as i32),
        Some(_) => {
            culprits.push(rank::LOCAL_RANK);
            None
        }
    };
    let by_offset = if agent.is_none() {
        match parsed(offset) {
            Some(None) => {
                culprits.push(rank::AGENT_RANK_OFFSET);
                None
            }
            off => {
                let off = off.flatten().unwrap_or(0);
                match global.map(|g| g.checked_add(off)) {
                    Some(Some(sum)) if sum >= 0 => Some((sum, off)),
                    Some(_) => {
                        culprits.extend([rank::RANK, rank::AGENT_RANK_OFFSET]);
                        None
                    }
                    None => None,
                }
            }
        }
    } else {
        None
    };
    if !culprits.is_empty() {
        return Err(culprits);
    }
    let (global, local_rank) = (global.unwrap(), local_rank.unwrap());
    Ok(match agent_rank {
        Some(a) => (a, global, None, local_rank, Method::Direct),
        None => {
            let (sum, off) = by_offset.unwrap();
            (sum, global, Some(off), local_rank, Method::Offset)
        }
    })
}

/// Whether `message` names `var` as a whole word (RANK inside AGENT_RANK does not count).
pub fn names_variable(message: &str, var: &str) -> bool {
    message.match_indices(var).any(|(i, _)| {
        let before = message[..i].chars().next_back();
        let after = message[i + var.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

