//! CEL expressions (SPEC §6.1): compiled once when a journey or audience is applied.
//! Evaluation (with `profile`, `event`, `steps`, `events.count(...)`, ...) arrives with
//! the journey interpreter.

/// A compiled expression.
pub struct Expr {
    pub source: String,
    pub program: cel::Program,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// Compile `source`, or say why it does not compile.
pub fn compile(source: &str) -> Result<Expr, String> {
    match cel::Program::compile(source) {
        Ok(program) => Ok(Expr { source: source.to_string(), program }),
        Err(e) => Err(e.to_string().lines().next().unwrap_or("syntax error").to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spec_expressions_compile_and_bad_ones_do_not() {
        for ok in [
            "profile.ltv > 500 && events.count(\"Order Completed\", duration(\"7d\")) == 0",
            "steps.recos_email.clicked",
            "event.properties.revenue",
            "in_segment(\"vip\") || profile.loyalty_tier == \"gold\"",
        ] {
            super::compile(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["profile.ltv >", "&& x", "steps..a"] {
            assert!(super::compile(bad).is_err(), "{bad} compiled");
        }
    }
}
