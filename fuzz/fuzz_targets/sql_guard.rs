//! A SQL statement as a client with a query key may send it: the guard that
//! bounds statements before planning (size, expression depth from tokens)
//! answers any bytes with Ok or a clear error, in time linear in the input,
//! and never panics or recurses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmtrace::query::guard::{check, StatementLimits};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let limits = StatementLimits {
        max_bytes: 1 << 20,
        max_depth: 64,
    };
    let _ = check(sql, limits);
});
