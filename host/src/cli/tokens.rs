//! `wasmtwin token create|revoke|list`: the token file nodes and the
//! control plane read with `--tokens`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use wasmtwin::api::roles::{Grant, Role, TokenFile, hash};

/// Arguments of `wasmtwin token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token, add its hash to the file (created if missing) and
    /// print the token: it is shown this once.
    Create {
        /// The token file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Who holds it (unique in the file; the event history names it).
        #[arg(long)]
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A twin it is limited to (repeat); none: all twins.
        #[arg(long = "twin", value_name = "NAME")]
        twins: Vec<String>,
    },
    /// Remove a token from the file: servers refuse it within seconds.
    Revoke {
        /// The token file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Whose token.
        #[arg(long)]
        name: String,
    },
    /// List the file's tokens (their holders, roles and twins).
    List {
        /// The token file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Reader,
    Operator,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Reader => Role::Reader,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// Runs `wasmtwin token`.
pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TokenCommand::Create {
            file,
            name,
            role,
            twins,
        } => {
            let mut tokens = if file.exists() {
                TokenFile::read(&file)?
            } else {
                TokenFile::default()
            };
            if name.is_empty() || tokens.tokens.iter().any(|g| g.name == name) {
                anyhow::bail!("--name `{name}`: empty, or already in {}", file.display());
            }
            if let Some(bad) = twins.iter().find(|t| !wasmtwin::spec::is_dns_label(t)) {
                anyhow::bail!("--twin `{bad}` is not a twin name (a DNS label)");
            }
            let token = super::host::new_token()?;
            tokens.tokens.push(Grant {
                name,
                sha256: hash(&token),
                role: role.into(),
                twins: twins.into_iter().collect::<BTreeSet<_>>(),
            });
            tokens.write(&file)?;
            println!("{token}");
        }
        TokenCommand::Revoke { file, name } => {
            let mut tokens = TokenFile::read(&file)?;
            let before = tokens.tokens.len();
            tokens.tokens.retain(|g| g.name != name);
            if tokens.tokens.len() == before {
                anyhow::bail!("no token named `{name}` in {}", file.display());
            }
            tokens.write(&file)?;
            eprintln!("revoked `{name}`");
        }
        TokenCommand::List { file } => {
            for grant in TokenFile::read(&file)?.tokens {
                let twins = if grant.twins.is_empty() {
                    "all twins".to_string()
                } else {
                    grant.twins.into_iter().collect::<Vec<_>>().join(",")
                };
                println!("{}\t{:?}\t{twins}", grant.name, grant.role);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
