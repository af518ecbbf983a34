//! Registry authentication: `WWW-Authenticate` challenges, token answers, Basic auth.
//! Runs in the caller's process (the CLI, a grader) during a pull.

use std::collections::HashMap;

use base64::Engine;
use serde::Deserialize;

/// One `WWW-Authenticate` challenge: lowercased scheme and parameters.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Challenge {
    pub(super) scheme: String,
    pub(super) params: HashMap<String, String>,
}

/// Parses `WWW-Authenticate` values (RFC 7235), tolerating several
/// challenges per header and quoted values containing commas or escapes.
pub(super) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let s: Vec<char> = header.chars().collect();
    let mut i = 0;
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && !s[*i].is_whitespace() && s[*i] != '=' && s[*i] != ',' {
            *i += 1;
        }
        s[start..*i].iter().collect::<String>()
    };
    while i < s.len() {
        if s[i].is_whitespace() || s[i] == ',' {
            i += 1;
            continue;
        }
        let word = token(&mut i);
        if word.is_empty() {
            i += 1; // a stray '='
            continue;
        }
        let mut j = i;
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        if j < s.len() && s[j] == '=' {
            i = j + 1;
            while i < s.len() && s[i].is_whitespace() {
                i += 1;
            }
            let value = if i < s.len() && s[i] == '"' {
                i += 1;
                let mut v = String::new();
                while i < s.len() && s[i] != '"' {
                    if s[i] == '\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    v.push(s[i]);
                    i += 1;
                }
                i += 1; // closing quote (or past the end)
                v
            } else {
                token(&mut i)
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(word.to_ascii_lowercase(), value);
            }
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: HashMap::new(),
            });
        }
    }
    out
}

#[derive(Deserialize)]
pub(super) struct TokenResponse {
    pub(super) token: Option<String>,
    pub(super) access_token: Option<String>,
}

pub(super) fn basic_auth(user: &str, pass: &str) -> String {
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {enc}")
}
