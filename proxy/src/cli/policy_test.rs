//! `portcullis policy test [DIR]`: runs the declarative cases under `DIR/tests/`.

use std::path::PathBuf;

use super::Exit;
use crate::policy_dir::compile_dir;
use crate::policy_tests::{run_file, test_files};

/// Arguments of `policy test`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policies directory; cases are read from its `tests/` folder.
    #[arg(default_value = "policies", env = "PORTCULLIS_POLICY_DIR")]
    pub dir: PathBuf,
    /// Print passing cases too.
    #[arg(long, short, env = "PORTCULLIS_VERBOSE")]
    pub verbose: bool,
}

/// Exit 0 when every case passes, 1 when one fails, 3 when the inputs are unusable.
pub fn run(args: &Args) -> Exit {
    let compiled = match compile_dir(&args.dir) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "{}: policies do not compile; no case was run",
                args.dir.display()
            );
            return Exit::InvalidInput;
        }
    };
    let files = test_files(&args.dir);
    if files.is_empty() {
        eprintln!("{}: no test files under tests/", args.dir.display());
        return Exit::InvalidInput;
    }
    let (mut passed, mut failed, mut unusable) = (0_usize, 0_usize, 0_usize);
    for file in files {
        match run_file(&compiled.dir, &compiled.policies, &file) {
            Ok(outcomes) => {
                for o in outcomes {
                    match o.failure {
                        None => {
                            passed += 1;
                            if args.verbose {
                                println!("PASS {}", o.label);
                            }
                        }
                        Some(why) => {
                            failed += 1;
                            println!("FAIL {}: {why}", o.label);
                        }
                    }
                }
            }
            Err(problem) => {
                unusable += 1;
                eprintln!("{problem}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if unusable > 0 {
        Exit::InvalidInput
    } else if failed > 0 {
        Exit::Failure
    } else {
        Exit::Ok
    }
}
