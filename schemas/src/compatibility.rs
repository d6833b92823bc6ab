//! The compatibility gate: every current schema must be FULL compatible with its released
//! version — new readers read old data and old readers read new data. A failure names the
//! schema and, where Avro can tell, the field.

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;

/// One schema that broke compatibility.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    pub message_type: String,
    pub problem: String,
}

impl std::fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.message_type, self.problem)
    }
}

/// Compare `current` against `released` schema sources (`(message type, .avsc text)`).
/// A released schema with no current counterpart is an incompatibility too (a removed
/// message breaks every consumer of it); a new message type is fine.
pub fn check(released: &[(&str, &str)], current: &[(&str, &str)]) -> Vec<Incompatibility> {
    let mut problems = Vec::new();
    for (message_type, released_text) in released {
        let problem = |problem: String| Incompatibility {
            message_type: message_type.to_string(),
            problem,
        };
        let Some((_, current_text)) = current.iter().find(|(name, _)| name == message_type) else {
            problems.push(problem(
                "removed: the released schema has no current version".into(),
            ));
            continue;
        };
        let (old, new) = match (
            Schema::parse_str(released_text),
            Schema::parse_str(current_text),
        ) {
            (Ok(old), Ok(new)) => (old, new),
            (Err(e), _) => {
                problems.push(problem(format!("released schema does not parse: {e}")));
                continue;
            }
            (_, Err(e)) => {
                problems.push(problem(format!("current schema does not parse: {e}")));
                continue;
            }
        };
        if let Err(e) = SchemaCompatibility::can_read(&old, &new) {
            problems.push(problem(format!(
                "the current schema cannot read data written with the released one (backward): {}",
                describe(&e)
            )));
        }
        if let Err(e) = SchemaCompatibility::can_read(&new, &old) {
            problems.push(problem(format!(
                "the released schema cannot read data written with the current one (forward): {}",
                describe(&e)
            )));
        }
    }
    problems
}

/// The error with its whole source chain (the field name is often one level down).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{CURRENT_SOURCES, RELEASED_SOURCES};

    const RELEASED: &str = r#"{"type":"record","name":"OrderApproved","namespace":"io.sagaflow.events",
        "fields":[{"name":"order_id","type":"string"},{"name":"total_cents","type":"long"}]}"#;

    #[test]
    fn the_repository_schemas_pass_the_gate() {
        let problems = check(RELEASED_SOURCES, CURRENT_SOURCES);
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn a_new_optional_field_passes() {
        let evolved = r#"{"type":"record","name":"OrderApproved","namespace":"io.sagaflow.events",
            "fields":[{"name":"order_id","type":"string"},{"name":"total_cents","type":"long"},
                      {"name":"note","type":["null","string"],"default":null}]}"#;
        assert_eq!(
            check(
                &[("OrderApproved", RELEASED)],
                &[("OrderApproved", evolved)]
            ),
            vec![]
        );
    }

    #[test]
    fn a_removed_required_field_fails_naming_schema_and_field() {
        let evolved = r#"{"type":"record","name":"OrderApproved","namespace":"io.sagaflow.events",
            "fields":[{"name":"order_id","type":"string"}]}"#;
        let problems = check(
            &[("OrderApproved", RELEASED)],
            &[("OrderApproved", evolved)],
        );
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].message_type, "OrderApproved");
        assert!(
            problems[0].problem.contains("total_cents"),
            "{}",
            problems[0]
        );
        assert!(problems[0].problem.contains("forward"), "{}", problems[0]);
    }

    #[test]
    fn a_new_required_field_fails() {
        let evolved = r#"{"type":"record","name":"OrderApproved","namespace":"io.sagaflow.events",
            "fields":[{"name":"order_id","type":"string"},{"name":"total_cents","type":"long"},
                      {"name":"note","type":"string"}]}"#;
        let problems = check(
            &[("OrderApproved", RELEASED)],
            &[("OrderApproved", evolved)],
        );
        assert!(
            problems.iter().any(|p| p.problem.contains("note")),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_changed_field_type_fails() {
        let evolved = r#"{"type":"record","name":"OrderApproved","namespace":"io.sagaflow.events",
            "fields":[{"name":"order_id","type":"string"},{"name":"total_cents","type":"string"}]}"#;
        assert!(
            !check(
                &[("OrderApproved", RELEASED)],
                &[("OrderApproved", evolved)]
            )
            .is_empty()
        );
    }

    #[test]
    fn a_removed_message_fails() {
        let problems = check(&[("OrderApproved", RELEASED)], &[]);
        assert_eq!(problems[0].message_type, "OrderApproved");
    }
}
