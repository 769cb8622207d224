//! Bounds a statement before it is parsed or planned: its size, and how deep
//! its expressions nest. Parts of the planner walk expressions recursively
//! without stack protection (DataFusion formats `1+1+…+1` recursively to
//! name the column), so a chain of a few thousand operators would overflow
//! any thread's stack and abort the whole process, which no error handling
//! can catch. The parser's own recursion limit covers nested parentheses,
//! calls and subqueries; this covers long operator chains and everything
//! nested inside them.
//!
//! The depth is estimated from tokens alone, without building a tree: per
//! parenthesised group (or CASE … END), one level per binary operator in the
//! group plus the deepest group inside it. That is an upper bound of the
//! expression tree's depth (a chain of n operators is a tree n deep; an
//! operand's own group adds its depth).

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::QueryError;

/// Statement bounds (see `query.max_sql_bytes`, `query.max_expr_depth`).
#[derive(Clone, Copy, Debug)]
pub struct StatementLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
}

impl Default for StatementLimits {
    fn default() -> Self {
        StatementLimits {
            max_bytes: 1 << 20,
            max_depth: 1000,
        }
    }
}

/// Refuses a statement over the size or depth limit, naming the limit.
pub fn check(sql: &str, limits: StatementLimits) -> Result<(), QueryError> {
    if sql.len() > limits.max_bytes {
        return Err(QueryError::TooLarge(format!(
            "the statement is {} bytes, over query.max_sql_bytes ({})",
            sql.len(),
            limits.max_bytes
        )));
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| QueryError::Invalid(format!("SQL error: {e}")))?;
    let depth = depth(&tokens);
    if depth > limits.max_depth {
        return Err(QueryError::TooLarge(format!(
            "expressions nest about {depth} deep, over query.max_expr_depth ({}) \
             (a chain of operators counts one level each; write a long OR chain of \
             one column as IN (…))",
            limits.max_depth
        )));
    }
    Ok(())
}

fn is_operator(t: &Token) -> bool {
    match t {
        Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::Mod
        | Token::StringConcat
        | Token::Eq
        | Token::DoubleEq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship
        | Token::Caret
        | Token::Ampersand
        | Token::Pipe
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::DuckIntDiv
        | Token::Arrow
        | Token::LongArrow => true,
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
        ),
        _ => false,
    }
}

fn opens(t: &Token) -> bool {
    matches!(t, Token::LParen | Token::LBracket)
        || matches!(t, Token::Word(w) if w.keyword == Keyword::CASE)
}

fn closes(t: &Token) -> bool {
    matches!(t, Token::RParen | Token::RBracket)
        || matches!(t, Token::Word(w) if w.keyword == Keyword::END)
}

/// The estimated nesting depth of the statement's expressions.
fn depth(tokens: &[Token]) -> usize {
    // Per open group: (operators in it, deepest group closed inside it).
    let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
    for t in tokens {
        if opens(t) {
            stack.push((0, 0));
        } else if closes(t) {
            // An unmatched closer is the parser's to report.
            if stack.len() > 1 {
                let (ops, inner) = stack.pop().unwrap_or_default();
                if let Some(parent) = stack.last_mut() {
                    parent.1 = parent.1.max(1 + ops + inner);
                }
            }
        } else if is_operator(t) {
            if let Some(top) = stack.last_mut() {
                top.0 += 1;
            }
        }
    }
    // Unclosed groups count too (the parser refuses them anyway).
    stack
        .iter()
        .rev()
        .fold(0, |inner, (ops, deepest)| 1 + ops + inner.max(*deepest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_of(sql: &str) -> usize {
        depth(&Tokenizer::new(&GenericDialect {}, sql).tokenize().unwrap())
    }

    #[test]
    fn chains_count_one_level_per_operator() {
        let plus = |n: usize| format!("SELECT {}", vec!["1"; n].join("+"));
        assert_eq!(depth_of(&plus(1)), 1);
        assert_eq!(depth_of(&plus(3000)), 3000);
        assert!(depth_of("SELECT a FROM t WHERE b = 1 AND c = 2") <= 5);
    }

    #[test]
    fn nesting_adds_the_deepest_inner_group() {
        let parens = |n: usize| format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(depth_of(&parens(10)), 11);
        let case = "SELECT CASE WHEN a = 1 THEN CASE WHEN b = 2 THEN 1 END END";
        assert!(depth_of(case) >= 3);
        // An IN list is flat: commas are not operators.
        let list = (0..10_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(depth_of(&format!("SELECT 1 WHERE x IN ({list})")) <= 3);
    }

    #[test]
    fn any_bytes_get_an_answer_never_a_panic() {
        // The fuzz target's property (fuzz/fuzz_targets/sql_guard.rs), on
        // its seeds cut at every length and on pseudo-random mixes of SQL's
        // punctuation, here where cargo-fuzz is not installed.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/sql_guard");
        let limits = StatementLimits {
            max_bytes: 1 << 20,
            max_depth: 64,
        };
        for entry in std::fs::read_dir(dir).unwrap() {
            let seed = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for (cut, _) in seed.char_indices() {
                let _ = check(&seed[..cut], limits);
            }
        }
        const PIECES: &[&str] = &[
            "(", ")", "[", "]", "CASE", "END", "+", "OR", "'", "\"", "1", " ", "--", "/*", "*/",
            "$$", "E'\\", "é",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let mut sql = String::new();
            for _ in 0..64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                sql.push_str(PIECES[(state % PIECES.len() as u64) as usize]);
            }
            let _ = check(&sql, limits);
        }
    }

    #[test]
    fn limits_name_themselves() {
        let limits = StatementLimits {
            max_bytes: 100,
            max_depth: 10,
        };
        let err = check(&"1+".repeat(60), limits).unwrap_err().to_string();
        assert!(err.contains("query.max_sql_bytes"), "{err}");
        let err = check(&format!("SELECT {}", vec!["1"; 20].join("+")), limits)
            .unwrap_err()
            .to_string();
        assert!(err.contains("query.max_expr_depth (10)"), "{err}");
        assert!(check("SELECT 1 + 1", limits).is_ok());
        assert!(check("SELECT 'unterminated", limits).is_err());
    }
}
