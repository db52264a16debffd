//! One thing wrong with an input: where (a JSON pointer) and what. Events, subscriptions
//! and bulk entries report their problems with it.

/// One thing wrong with an input: where (a JSON pointer) and what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// JSON pointer into the input.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}
