//! `portcullis inject`: adds the sidecar to the workloads of Kubernetes manifests, offline,
//! as the injection webhook would (for GitOps: commit what the cluster will run). Reads a
//! file or standard input (multi-document YAML, `List`s), writes the manifests to standard
//! output and one line per workload to standard error. A workload that cannot be injected
//! stops the whole run (exit 3) with every reason; nothing is written then.

use std::io::Read;
use std::path::PathBuf;

use super::{ConfigArgs, Exit, load_config, parse_sets};
use crate::inject::Injector;
use crate::inject::manifests::inject_documents;

/// Arguments of `inject`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifests; `-` or nothing: standard input.
    pub file: Option<PathBuf>,
    /// The configuration, for its `inject` section (image, control plane, ConfigMaps,
    /// Secret, resources), e.g. `--set inject.image=registry.example/portcullis:0.1.0`.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The cluster's version (`1.30`), for `inject.native_mode: auto`: native sidecars from
    /// 1.29 (overrides `inject.kubernetes_version`).
    #[arg(long, value_name = "VERSION")]
    pub kubernetes_version: Option<String>,
}

/// Prints the injected manifests.
pub fn run(args: &Args) -> Exit {
    let Some(mut sets) = parse_sets(&args.config.sets) else {
        return Exit::Usage;
    };
    if let Some(v) = &args.kubernetes_version {
        let Some(flag) = parse_sets(&[format!("inject.kubernetes_version=\"{v}\"")]) else {
            return Exit::Usage;
        };
        sets.extend(flag);
    }
    let Some(config) = load_config(args.config.config.as_deref(), &sets) else {
        return Exit::InvalidInput;
    };
    let (name, text) = match args.file.as_deref().filter(|f| f.as_os_str() != "-") {
        Some(file) => match std::fs::read_to_string(file) {
            Ok(text) => (file.display().to_string(), text),
            Err(e) => {
                eprintln!("portcullis inject: `{}`: {e}", file.display());
                return Exit::InvalidInput;
            }
        },
        None => {
            let mut text = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut text) {
                eprintln!("portcullis inject: standard input: {e}");
                return Exit::InvalidInput;
            }
            (String::from("<stdin>"), text)
        }
    };
    let mut documents: Vec<serde_json::Value> = match serde_saphyr::from_multiple(&text) {
        Ok(documents) => documents,
        Err(e) => {
            eprintln!("portcullis inject: {name}: {e}");
            return Exit::InvalidInput;
        }
    };
    // Empty documents (`---` at the end) carry nothing.
    documents.retain(|d| !d.is_null());
    let injector = Injector::new(config.inject);
    match inject_documents(&injector, &mut documents) {
        Ok(reports) => {
            let mut out = String::new();
            for document in &documents {
                match serde_saphyr::to_string(document) {
                    Ok(yaml) => {
                        out.push_str("---\n");
                        out.push_str(&yaml);
                    }
                    Err(e) => {
                        eprintln!("portcullis inject: cannot write YAML: {e}");
                        return Exit::Failure;
                    }
                }
            }
            print!("{out}");
            for r in reports {
                eprintln!("{}: {}", r.workload, r.outcome);
            }
            Exit::Ok
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{name}: {p}");
            }
            eprintln!(
                "portcullis inject: {} problem(s); nothing written",
                problems.len()
            );
            Exit::InvalidInput
        }
    }
}
