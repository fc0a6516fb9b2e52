//! How complex a statement may be. Parsing builds a chain of `N` operators
//! as an expression `N` levels deep, and planning recurses over it (in
//! DataFusion and in datafusion-postgres' rewriting) in frames of
//! kilobytes: 2,000 `+`s, `AND`s or `OR`ed equalities (a pasted list of
//! actors) once overflowed a worker's stack and aborted the whole server,
//! ingest included. So a statement is measured on its tokens, which the
//! tokenizer reads in a loop, before anything recurses over it, and one
//! past the bounds gets `54001 statement too complex`.
//!
//! The bounds sit well inside what the runtime's thread stacks
//! ([`crate::cli::THREAD_STACK_BYTES`]) take: 4,000 operators planned in a
//! debug build. A list of values belongs in `IN (...)`, which has no depth.

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use pgwire::error::PgWireResult;

use super::sqlstate::statement_error;

/// Most operators (`+`, `=`, `AND`, `OR`, `NOT`, `||`, ...) in one statement.
pub const MAX_STATEMENT_OPERATORS: usize = 1_024;
/// Deepest nesting of parentheses and brackets in one statement.
pub const MAX_STATEMENT_NESTING: usize = 128;

/// Refuses `sql` with 54001 when it has more operators or deeper nesting
/// than the bounds. Text the tokenizer cannot read passes: the parser will
/// say what is wrong with it.
pub fn check(sql: &str) -> PgWireResult<()> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return Ok(());
    };
    let (mut operators, mut depth, mut deepest) = (0usize, 0usize, 0usize);
    for token in &tokens {
        match token {
            Token::LParen | Token::LBracket => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::Word(word) if matches!(word.keyword, Keyword::AND | Keyword::OR | Keyword::NOT) => operators += 1,
            Token::DoubleEq
            | Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::DuckIntDiv
            | Token::Mod
            | Token::StringConcat
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret => operators += 1,
            _ => {}
        }
    }
    if operators > MAX_STATEMENT_OPERATORS || deepest > MAX_STATEMENT_NESTING {
        return Err(statement_error(
            "54001",
            format!(
                "statement too complex: {operators} operators nested up to {deepest} deep (at most \
                 {MAX_STATEMENT_OPERATORS} operators and {MAX_STATEMENT_NESTING} levels); write a list of \
                 values as IN (...)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> bool {
        check(sql).is_err()
    }

    #[test]
    fn long_chains_and_deep_nesting_are_refused_lists_are_not() {
        let chain = |n: usize, op: &str| format!("select {}", vec!["1"; n].join(op));
        assert!(!refused(&chain(1_000, "+")));
        assert!(refused(&chain(2_000, "+")));
        let ands = (0..2_000).map(|i| format!("seq <> {i}")).collect::<Vec<_>>().join(" and ");
        assert!(refused(&format!("select * from audit_events where {ands}")));
        let ors = (0..2_000).map(|i| format!("actor_id = 'u{i}'")).collect::<Vec<_>>().join(" or ");
        assert!(refused(&format!("select * from audit_events where {ors}")));
        let listed = (0..20_000).map(|i| format!("'u{i}'")).collect::<Vec<_>>().join(", ");
        assert!(!refused(&format!("select * from audit_events where actor_id in ({listed})")));
        let nested = format!("select {}1{}", "(".repeat(200), ")".repeat(200));
        assert!(refused(&nested));
        assert!(!refused(&format!("select {}1{}", "(".repeat(100), ")".repeat(100))));
        // Operators inside literals and comments are text, not operators.
        assert!(!refused(&format!("select '{}' -- {}", "+".repeat(5_000), "+".repeat(5_000))));
        let Err(pgwire::error::PgWireError::UserError(info)) = check(&chain(3_000, "+")) else { panic!() };
        assert_eq!(info.code, "54001");
        assert!(info.message.contains("too complex"), "{}", info.message);
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_cases(2048))]

        /// Any text is measured without a panic, and what it refuses is
        /// refused as too complex.
        #[test]
        fn any_text_is_measured_without_a_panic(sql in ".{0,400}") {
            if let Err(error) = check(&sql) {
                proptest::prop_assert!(error.to_string().contains("too complex"), "{}", error);
            }
        }

        #[test]
        fn sql_made_of_operators_and_brackets_is_measured(parts in proptest::collection::vec(proptest::sample::select(vec!["(", ")", "+", "1", " and ", "x", "'", "--", "/*", "*/", "\n", "$$"]), 0..3000)) {
            let sql = format!("select {}", parts.concat());
            if let Err(error) = check(&sql) {
                proptest::prop_assert!(error.to_string().contains("too complex"), "{}", error);
            }
        }
    }
}
