//! `portcullis token`: mints a token signed by the dev key of a data directory, for trying
//! `portcullis serve` out. Those tokens are accepted only by a `serve` that trusts its dev
//! key (no JWKS configured).

use std::path::PathBuf;

use super::Exit;
use crate::devkey::{DEV_AUDIENCE, DEV_ISSUER, DevKey};

/// Arguments of `token`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The subject: a principal id in the store (the demo data has alice, bob, carol,
    /// mallory and the service billing).
    #[arg(long)]
    pub sub: String,
    /// The data directory holding the dev key.
    #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = "portcullis-data")]
    pub data_dir: PathBuf,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_seconds: i64,
    /// Mark the token as authenticated with a second factor (`amr: ["pwd", "mfa"]`).
    #[arg(long)]
    pub mfa: bool,
    /// A client-credentials token: the subject is a service (`gty: client-credentials`).
    #[arg(long)]
    pub service: bool,
    /// A `risk_score` claim (0..100).
    #[arg(long)]
    pub risk: Option<u8>,
    /// A `device_id` claim.
    #[arg(long)]
    pub device: Option<String>,
    /// A `sid` claim (revoking it refuses the token).
    #[arg(long)]
    pub sid: Option<String>,
    /// The audience.
    #[arg(long, default_value = DEV_AUDIENCE)]
    pub aud: String,
    /// Any other claim, `name=JSON` (or `name=text`), repeatable.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    pub claims: Vec<String>,
}

/// Prints the token on stdout.
pub fn run(args: &Args) -> Exit {
    let key = match DevKey::load(&args.data_dir) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("portcullis token: {e}");
            return Exit::InvalidInput;
        }
    };
    let now = jiff::Timestamp::now().as_second();
    let mut claims = serde_json::json!({
        "iss": DEV_ISSUER,
        "aud": args.aud,
        "sub": args.sub,
        "iat": now,
        "nbf": now,
        "exp": now + args.ttl_seconds,
        "jti": uuid::Uuid::now_v7().to_string(),
        "amr": if args.mfa { vec!["pwd", "mfa"] } else { vec!["pwd"] },
    });
    let Some(map) = claims.as_object_mut() else {
        return Exit::Failure;
    };
    if args.service {
        map.insert(String::from("gty"), "client-credentials".into());
    }
    if let Some(risk) = args.risk {
        map.insert(String::from("risk_score"), risk.into());
    }
    if let Some(device) = &args.device {
        map.insert(String::from("device_id"), device.as_str().into());
    }
    if let Some(sid) = &args.sid {
        map.insert(String::from("sid"), sid.as_str().into());
    }
    for claim in &args.claims {
        let Some((name, value)) = claim.split_once('=') else {
            eprintln!("portcullis token: --claim `{claim}` is not of the form NAME=VALUE");
            return Exit::Usage;
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
        map.insert(name.to_owned(), value);
    }
    match key.sign(&claims) {
        Ok(token) => {
            println!("{token}");
            Exit::Ok
        }
        Err(e) => {
            eprintln!("portcullis token: cannot sign: {e}");
            Exit::Failure
        }
    }
}
