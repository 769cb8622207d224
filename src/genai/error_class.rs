//! Error classes: a low-cardinality name for why a call failed, from whatever
//! the producer recorded (an `error.type` class name, an HTTP status, a message).

/// Fragments of a squashed (lower-case, alphanumeric only) error name, in match
/// order, and the class they mean. `RateLimitError`, `openai.RateLimitError`
/// and `rate_limited` all squash to something containing `ratelimit`.
const FRAGMENTS: &[(&str, &str)] = &[
    ("ratelimit", "rate_limited"),
    ("toomanyrequests", "rate_limited"),
    ("resourceexhausted", "rate_limited"),
    ("contextlength", "context_length_exceeded"),
    ("contextwindow", "context_length_exceeded"),
    ("contentfilter", "content_filter"),
    ("contentpolicy", "content_filter"),
    ("authentication", "authentication"),
    ("unauthorized", "authentication"),
    ("unauthenticated", "authentication"),
    ("permission", "permission"),
    ("forbidden", "permission"),
    ("notfound", "not_found"),
    ("timeout", "timeout"),
    ("timedout", "timeout"),
    ("deadlineexceeded", "timeout"),
    ("cancel", "cancelled"),
    ("connection", "connection"),
    ("badrequest", "invalid_request"),
    ("invalidrequest", "invalid_request"),
    ("invalidargument", "invalid_request"),
    ("unprocessable", "invalid_request"),
    ("internalserver", "server_error"),
    ("servererror", "server_error"),
    ("overloaded", "server_error"),
    ("unavailable", "server_error"),
];

pub(crate) const OTHER: &str = "_OTHER";

/// Class of an HTTP status code, `None` for codes that are not errors.
pub(crate) fn from_http_status(code: u64) -> Option<&'static str> {
    Some(match code {
        429 => "rate_limited",
        401 => "authentication",
        403 => "permission",
        404 => "not_found",
        408 => "timeout",
        400 | 413 | 422 => "invalid_request",
        499 => "cancelled",
        500..=599 => "server_error",
        400..=499 => OTHER,
        _ => return None,
    })
}

/// Class of a raw error name or message; `_OTHER` when nothing matches.
pub(crate) fn classify(raw: &str) -> &'static str {
    let trimmed = raw.trim();
    if let Ok(code) = trimmed.parse::<u64>() {
        return from_http_status(code).unwrap_or(OTHER);
    }
    let squashed: String = trimmed
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    FRAGMENTS
        .iter()
        .find(|(fragment, _)| squashed.contains(fragment))
        .map(|(_, class)| *class)
        .unwrap_or(OTHER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_of_the_python_sdks() {
        for (raw, want) in [
            ("RateLimitError", "rate_limited"),
            ("openai.RateLimitError", "rate_limited"),
            ("rate_limited", "rate_limited"),
            ("APITimeoutError", "timeout"),
            ("APIConnectionError", "connection"),
            ("InternalServerError", "server_error"),
            ("overloaded_error", "server_error"),
            ("BadRequestError", "invalid_request"),
            ("AuthenticationError", "authentication"),
            ("PermissionDeniedError", "permission"),
            ("NotFoundError", "not_found"),
            ("context_length_exceeded", "context_length_exceeded"),
            ("429", "rate_limited"),
            ("503", "server_error"),
            ("_OTHER", OTHER),
            ("java.lang.IllegalStateException", OTHER),
        ] {
            assert_eq!(classify(raw), want, "{raw}");
        }
    }
}
