//! The committed API documents (`docs/openapi.json`, `docs/asyncapi.json`) are what the code
//! generates: a handler, type or schema change without regenerating them fails here. Pure:
//! the documents are generated in process and compared with the files.

use std::path::PathBuf;

fn committed(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; generate it (see below)", path.display()))
}

fn assert_current(name: &str, command: &str, generated: &str) {
    let committed = committed(name);
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "the length".to_string(), |i| format!("line {}", i + 1));
        panic!(
            "docs/{name} is stale (first difference at {line}): regenerate it with\n    \
             cargo run --bin sagaflow -- {command} --out docs/{name}\nand commit it"
        );
    }
}

#[test]
fn docs_openapi_json_is_current() {
    let generated = sagaflow_runtime::openapi::render(&sagaflow_platform::openapi());
    assert_current("openapi.json", "openapi", &generated);
}

#[test]
fn docs_openapi_provider_json_is_current() {
    let generated = sagaflow_runtime::openapi::render(&payment_service::provider_openapi());
    assert_current("openapi-provider.json", "openapi --provider", &generated);
}

#[test]
fn docs_asyncapi_json_is_current() {
    assert_current(
        "asyncapi.json",
        "asyncapi",
        &sagaflow_schemas::asyncapi::render(),
    );
}

/// Components are merged by name, the first one winning: two types of one name in two
/// components would silently describe one with the other's schema.
#[test]
fn no_two_components_name_different_schemas_alike() {
    let merged = sagaflow_platform::openapi();
    let merged = merged.components.unwrap().schemas;
    for doc in [
        order_service::openapi(),
        inventory_service::openapi(),
        inventory_service::control_openapi(),
        payment_service::openapi(),
        notification_service::openapi(),
        saga_orchestrator::openapi(),
        query_service::openapi(),
    ] {
        for (name, schema) in doc.components.unwrap_or_default().schemas {
            assert_eq!(
                serde_json::to_value(&schema).unwrap(),
                serde_json::to_value(&merged[&name]).unwrap(),
                "two components define a schema named {name}: rename one (#[schema(as = …)])"
            );
        }
    }
}

#[test]
fn the_openapi_document_covers_every_component_and_its_errors() {
    let doc: serde_json::Value = serde_json::from_str(&sagaflow_runtime::openapi::render(
        &sagaflow_platform::openapi(),
    ))
    .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/orders", "post"),
        ("/orders/{id}", "get"),
        ("/inventory/{sku}", "get"),
        ("/inventory/{sku}", "put"),
        ("/inventory/{sku}/adjustments", "post"),
        ("/payments/{order_id}", "get"),
        ("/notifications", "get"),
        ("/sagas/{id}", "get"),
        ("/sagas/overdue", "get"),
        ("/views/orders/{id}", "get"),
        ("/views/customers/{id}/orders", "get"),
        ("/views/stock/{sku}", "get"),
        ("/_control/inventory", "get"),
        ("/_control/inventory", "post"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/asyncapi.json", "get"),
    ] {
        let operation = &paths[path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let protected = !path.starts_with("/health")
            && !["/metrics", "/openapi.json", "/asyncapi.json"].contains(&path);
        if protected {
            assert_eq!(
                operation["security"][0]["bearer"],
                serde_json::json!([]),
                "{method} {path}"
            );
            let unauthorized = &operation["responses"]["401"]["content"];
            assert!(
                unauthorized["application/problem+json"].is_object(),
                "{method} {path} lacks its 401 Problem"
            );
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}
