//! Which agent this worker belongs to, from the environment (docs/protocol.md section 1).
//!
//! `AGENT_RANK` set: the agent rank directly (`direct`). Otherwise `RANK + AGENT_RANK_OFFSET`
//! (offset default 0, `offset`). The offset is added to the *global* `RANK`, as the reference
//! code does and as agents name their files (the reference docs' "LOCAL_RANK + OFFSET" only
//! agrees on one node). `RANK` is required in both cases; `LOCAL_RANK` (default 0) picks the
//! CUDA device.

use std::ffi::OsString;

use crate::error::{Error, ErrorKind, Result};

pub const AGENT_RANK: &str = "AGENT_RANK";
pub const RANK: &str = "RANK";
pub const AGENT_RANK_OFFSET: &str = "AGENT_RANK_OFFSET";
pub const LOCAL_RANK: &str = "LOCAL_RANK";

/// Where environment variables come from: the process, or a table in tests.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<OsString>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
}

impl<F: Fn(&str) -> Option<OsString>> EnvSource for F {
    fn var(&self, name: &str) -> Option<OsString> {
        self(name)
    }
}

/// How the agent rank was determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Direct,
    Offset,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Direct => "direct",
            Method::Offset => "offset",
        }
    }
}

/// The ranks resolved from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankInfo {
    pub agent_rank: i64,
    pub global_rank: i64,
    /// `Some` for `Method::Offset` (0 when AGENT_RANK_OFFSET is unset), `None` for `Direct`.
    pub rank_offset: Option<i64>,
    pub local_rank: i32,
    pub method: Method,
}

impl RankInfo {
    /// The device string the worker uses, `cuda:{LOCAL_RANK}`.
    pub fn device(&self) -> String {
        format!("cuda:{}", self.local_rank)
    }
}

/// Python's `str.strip()` set restricted to ASCII: space, \t, \n, \v, \f, \r.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Parses an integer the strict way: ASCII whitespace, an optional sign, one or more ASCII
/// digits (leading zeros fine), ASCII whitespace, and nothing else. No `_`, no `1.5`, no
/// non-ASCII digits (all of which Python's `int()` would take or treat differently).
pub fn parse_integer(text: &[u8]) -> Option<i64> {
    let start = text.iter().position(|&b| !is_space(b))?;
    let end = text.iter().rposition(|&b| !is_space(b))? + 1;
    let body = &text[start..end];
    let (negative, digits) = match body.first() {
        Some(b'-') => (true, &body[1..]),
        Some(b'+') => (false, &body[1..]),
        _ => (false, body),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Accumulate negatively so that i64::MIN parses.
    let mut value: i64 = 0;
    for &d in digits {
        value = value.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

fn quote(value: &OsString) -> String {
    format!("{:?}", value.to_string_lossy())
}

fn env_error(message: String) -> Error {
    Error::new(ErrorKind::Env, message)
}

/// Reads and parses one variable; `Ok(None)` when unset.
fn read_integer(env: &dyn EnvSource, name: &str) -> Result<Option<i64>> {
    use std::os::unix::ffi::OsStrExt;
    let Some(raw) = env.var(name) else { return Ok(None) };
    match parse_integer(raw.as_bytes()) {
        Some(v) => Ok(Some(v)),
        None => Err(env_error(format!(
            "environment variable {name}={} is not an integer: expected optional ASCII whitespace, \
             an optional sign and ASCII digits that fit in 64 bits",
            quote(&raw)
        ))),
    }
}

/// Resolves the agent rank and the worker's ranks from the environment.
pub fn resolve(env: &dyn EnvSource) -> Result<RankInfo> {
    let agent_rank = read_integer(env, AGENT_RANK)?;
    let global_rank = read_integer(env, RANK)?.ok_or_else(|| {
        env_error(if agent_rank.is_some() {
            format!(
                "environment variable {RANK} is not set: it is required also when {AGENT_RANK} is set (as the \
                 reference requires it; torchrun sets it): set {RANK} to this worker's global rank"
            )
        } else {
            format!(
                "environment variable {RANK} is not set: it is required (torchrun sets it); set it to this worker's \
                 global rank (the agent rank is then {RANK} + {AGENT_RANK_OFFSET}), or set {AGENT_RANK} and {RANK}"
            )
        })
    })?;
    let local_rank = match read_integer(env, LOCAL_RANK)? {
        None => 0,
        Some(v) => i32::try_from(v).ok().filter(|v| *v >= 0).ok_or_else(|| {
            env_error(format!(
                "environment variable {LOCAL_RANK}={} is out of range: it must lie in 0..=2147483647",
                quote(&env.var(LOCAL_RANK).unwrap_or_default())
            ))
        })?,
    };
    let raw = |name| quote(&env.var(name).unwrap_or_default());
    let (agent_rank, rank_offset, method) = match agent_rank {
        Some(rank) if rank < 0 => {
            return Err(env_error(format!(
                "environment variable {AGENT_RANK}={} is negative: an agent rank must be >= 0",
                raw(AGENT_RANK)
            )))
        }
        Some(rank) => (rank, None, Method::Direct),
        None => {
            let offset = read_integer(env, AGENT_RANK_OFFSET)?.unwrap_or(0);
            let Some(rank) = global_rank.checked_add(offset) else {
                return Err(env_error(format!(
                    "{RANK}={} + {AGENT_RANK_OFFSET}={} overflows a 64-bit integer",
                    raw(RANK),
                    raw(AGENT_RANK_OFFSET)
                )));
            };
            if rank < 0 {
                return Err(env_error(format!(
                    "{RANK}={} + {AGENT_RANK_OFFSET}={} gives agent rank {rank}, which is negative; \
                     check {AGENT_RANK_OFFSET}, or set {AGENT_RANK} directly",
                    raw(RANK),
                    raw(AGENT_RANK_OFFSET)
                )));
            }
            (rank, Some(offset), Method::Offset)
        }
    };
    Ok(RankInfo { agent_rank, global_rank, rank_offset, local_rank, method })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        move |name: &str| map.get(name).cloned()
    }

    #[test]
    fn parse_integer_accepts_the_strict_form() {
        for (text, want) in [
            ("0", 0),
            ("7", 7),
            ("+7", 7),
            ("-7", -7),
            ("007", 7),
            ("-0", 0),
            (" \t\n\x0b\x0c\r12 \n", 12),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ] {
            assert_eq!(parse_integer(text.as_bytes()), Some(want), "{text:?}");
        }
    }

    #[test]
    fn parse_integer_rejects_everything_else() {
        for text in [
            "",
            " ",
            "+",
            "-",
            "+-1",
            "--1",
            "1_000",
            "1.5",
            "1e3",
            "0x10",
            "1 2",
            "abc",
            "١",
            "٣",
            "1\0",
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
            " + 1",
            "\u{a0}1",
            "1\u{a0}",
        ] {
            assert_eq!(parse_integer(text.as_bytes()), None, "{text:?}");
        }
        assert_eq!(parse_integer(b"\xff1"), None);
    }

    #[test]
    fn direct_method() {
        let r = resolve(&env(&[("AGENT_RANK", "3"), ("RANK", "1"), ("LOCAL_RANK", "1")])).unwrap();
        assert_eq!(
            r,
            RankInfo { agent_rank: 3, global_rank: 1, rank_offset: None, local_rank: 1, method: Method::Direct }
        );
        assert_eq!(r.device(), "cuda:1");
        assert_eq!(r.method.as_str(), "direct");
    }

    #[test]
    fn direct_method_ignores_offset() {
        let r = resolve(&env(&[("AGENT_RANK", "2"), ("RANK", "5"), ("AGENT_RANK_OFFSET", "junk")])).unwrap();
        assert_eq!((r.agent_rank, r.rank_offset, r.method), (2, None, Method::Direct));
    }

    #[test]
    fn offset_method_uses_global_rank() {
        let r = resolve(&env(&[("RANK", "5"), ("AGENT_RANK_OFFSET", "4"), ("LOCAL_RANK", "1")])).unwrap();
        assert_eq!(
            r,
            RankInfo { agent_rank: 9, global_rank: 5, rank_offset: Some(4), local_rank: 1, method: Method::Offset }
        );
        let r = resolve(&env(&[("RANK", "5")])).unwrap();
        assert_eq!((r.agent_rank, r.rank_offset, r.local_rank, r.method), (5, Some(0), 0, Method::Offset));
        let r = resolve(&env(&[("RANK", "-3"), ("AGENT_RANK_OFFSET", "3")])).unwrap();
        assert_eq!(r.agent_rank, 0);
        let r = resolve(&env(&[("RANK", "9223372036854775807"), ("AGENT_RANK_OFFSET", "0")])).unwrap();
        assert_eq!(r.agent_rank, i64::MAX);
    }

    fn env_err(pairs: &[(&str, &str)]) -> Error {
        let e = resolve(&env(pairs)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Env, "{e}");
        e
    }

    #[test]
    fn malformed_values_name_the_variable_and_quote_the_value() {
        for var in ["AGENT_RANK", "RANK", "AGENT_RANK_OFFSET", "LOCAL_RANK"] {
            for bad in ["", " ", "x", "1_0", "1.5", "+", "0x1", "99999999999999999999"] {
                let mut pairs = vec![("RANK", "0")];
                pairs.retain(|(k, _)| *k != var);
                pairs.push((var, bad));
                let e = env_err(&pairs);
                assert!(e.message().contains(var), "{var}={bad:?}: {e}");
                assert!(e.message().contains(&format!("{bad:?}")), "{var}={bad:?}: {e}");
            }
        }
    }

    #[test]
    fn range_violations() {
        let e = env_err(&[("AGENT_RANK", "-1"), ("RANK", "0")]);
        assert!(e.message().contains("AGENT_RANK=\"-1\""), "{e}");
        let e = env_err(&[("RANK", "1"), ("AGENT_RANK_OFFSET", "-2")]);
        assert!(e.message().contains("negative"), "{e}");
        let e = env_err(&[("RANK", "9223372036854775807"), ("AGENT_RANK_OFFSET", "1")]);
        assert!(e.message().contains("overflows"), "{e}");
        let e = env_err(&[("RANK", "-9223372036854775808"), ("AGENT_RANK_OFFSET", "-1")]);
        assert!(e.message().contains("overflows"), "{e}");
        for bad in ["-1", "2147483648", "-9223372036854775808"] {
            let e = env_err(&[("RANK", "0"), ("LOCAL_RANK", bad)]);
            assert!(e.message().contains(&format!("LOCAL_RANK=\"{bad}\"")), "{e}");
        }
        let r = resolve(&env(&[("RANK", "0"), ("LOCAL_RANK", "2147483647")])).unwrap();
        assert_eq!(r.device(), "cuda:2147483647");
    }

    #[test]
    fn rank_is_required_even_with_agent_rank() {
        let e = env_err(&[("AGENT_RANK", "0")]);
        assert!(e.message().contains("RANK is not set"), "{e}");
        assert!(e.message().contains("also when AGENT_RANK is set") && !e.message().contains("as well"), "{e}");
        let e = env_err(&[]);
        assert!(e.message().contains("RANK is not set") && e.message().contains("or set AGENT_RANK and RANK"), "{e}");
    }

    #[test]
    fn non_utf8_values_are_quoted_lossily() {
        use std::os::unix::ffi::OsStringExt;
        let f = |name: &str| match name {
            "RANK" => Some(OsString::from_vec(b"1\xff".to_vec())),
            _ => None,
        };
        let e = resolve(&f).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Env);
        assert!(e.message().contains("RANK=\"1\u{fffd}\""), "{e}");
    }
}
