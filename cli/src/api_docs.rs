//! `sagaflow openapi` and `sagaflow asyncapi`: print the API documents, or write them (the
//! committed copies are `docs/openapi.json`, `docs/openapi-provider.json` and
//! `docs/asyncapi.json`; a test of the platform crate fails when one is stale, naming the
//! command that regenerates it).

use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct DocArgs {
    /// Write the document to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct OpenapiArgs {
    /// The simulated payment provider's document instead of the platform's.
    #[arg(long)]
    pub provider: bool,
    #[command(flatten)]
    pub doc: DocArgs,
}

/// The OpenAPI 3.1 document of every route `sagaflow dev` serves (or of the simulated
/// provider's).
pub fn openapi(args: OpenapiArgs) -> anyhow::Result<()> {
    let doc = if args.provider {
        payment_service::provider_openapi()
    } else {
        sagaflow_platform::openapi()
    };
    emit(&sagaflow_runtime::openapi::render(&doc), args.doc.out)
}

/// The AsyncAPI 3.0 document of the topics.
pub fn asyncapi(args: DocArgs) -> anyhow::Result<()> {
    emit(&sagaflow_schemas::asyncapi::render(), args.out)
}

fn emit(text: &str, out: Option<PathBuf>) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
            Ok(())
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
