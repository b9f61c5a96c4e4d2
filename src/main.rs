//! The `rookery` command: run the server, manage users, print the DOAP description.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use rookery::admin::{self, Request};
use rookery::auth::Accounts;
use rookery::config::Config;
use rookery::store::Stores;

const DEFAULT_CONFIG: &str = "conf/rookery.toml";

#[derive(Parser)]
#[command(name = "rookery", version, about = "Rookery, an XMPP server")]
struct Cli {
    /// Configuration file (default: conf/rookery.toml; built-in defaults if that file is absent).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Manage accounts; works whether or not the server is running.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Print the DOAP description of the implemented specifications.
    Doap,
}

#[derive(Subcommand)]
enum UserAction {
    /// Create an account. Prompts for the password when --password is not given.
    Add {
        /// "alice" or "alice@domain"
        jid: String,
        #[arg(long, short)]
        password: Option<String>,
    },
    /// Change an account's password.
    Passwd {
        jid: String,
        #[arg(long, short)]
        password: Option<String>,
    },
    /// Delete an account (its sessions are closed if the server runs).
    Del { jid: String },
    /// List the accounts.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Doap) => {
            print!("{}", rookery::doap::render());
            return ExitCode::SUCCESS;
        }
        None | Some(Command::Serve) => {}
        Some(Command::User { .. }) => {}
    }
    let config = match load_config(cli.config.as_deref()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("rookery: {message}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::User { action }) => user_command(&config, action),
        _ => serve(config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rookery: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config, String> {
    match path {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None if Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(Path::new(DEFAULT_CONFIG)).map_err(|e| e.to_string())
        }
        None => Ok(Config::default()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn serve(config: Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.server.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // One crypto provider in the tree (ring); installing it as the default is cheap insurance.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tune_allocator();
    raise_fd_limit(config.server.max_connections);
    runtime()?.block_on(rookery::server::run(config))
}

/// Every connection is a file descriptor, and the usual soft limit (1024) is far below
/// `[server] max_connections`: raise it to the hard limit, as the operator allows, and say so if
/// that is still lower than the connections configured.
fn raise_fd_limit(connections: usize) {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        // A few dozen descriptors go to the database, listeners and the admin socket.
        if (limit.rlim_cur as u128) < connections as u128 + 64 {
            tracing::warn!(
                open_files = limit.rlim_cur,
                max_connections = connections,
                "the file descriptor limit is below [server] max_connections; raise it (ulimit -n, LimitNOFILE=) or expect accept failures"
            );
        }
    }
}

/// glibc's malloc raises its mmap threshold to the size of the largest block freed, up to 32 MiB.
/// After one Argon2 hash (19 MiB of working memory) every later one then comes from the heap,
/// one per thread arena, and stays resident: a few hundred logins grew the server by hundreds of
/// MiB. A fixed threshold keeps such blocks in mmap, returned to the system when freed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's tuning parameters; called once, before any thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        }
    }
}

fn user_command(config: &Config, action: UserAction) -> anyhow::Result<()> {
    let request = match action {
        UserAction::Add { jid, password } => {
            let password = password_or_prompt(password, &jid)?;
            Request::Add {
                user: jid,
                password,
            }
        }
        UserAction::Passwd { jid, password } => {
            let password = password_or_prompt(password, &jid)?;
            Request::Passwd {
                user: jid,
                password,
            }
        }
        UserAction::Del { jid } => Request::Del { user: jid },
        UserAction::List => Request::List,
    };
    let socket = config.admin_socket();
    let response = runtime()?.block_on(async {
        if let Some(response) = admin::send(&socket, &request).await? {
            return Ok::<_, anyhow::Error>(response);
        }
        // No server answers: work on the data directory directly.
        let stores = Stores::open_sled(&config.server.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "{e}\nthe server's admin socket {} did not answer either, so the command cannot run now",
                socket.display()
            )
        })?;
        let accounts = Accounts::new(
            stores.clone(),
            config.domain(),
            config.auth.clone(),
            config.upload_dir(),
        );
        let response = admin::execute(&accounts, None, request).await;
        stores.flush().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(response)
    })?;
    if response.ok {
        for user in &response.users {
            println!("{user}");
        }
        if response.users.is_empty() {
            println!("{}", response.message);
        }
        Ok(())
    } else {
        anyhow::bail!("{}", response.message)
    }
}

/// The password from the flag, or asked for: twice on a terminal, one line from a pipe.
fn password_or_prompt(given: Option<String>, jid: &str) -> anyhow::Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {jid}: "))?;
        let second = rpassword::prompt_password("Again: ")?;
        if first != second {
            anyhow::bail!("the two passwords differ");
        }
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let password = line.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            anyhow::bail!("no password given on standard input (or use --password)");
        }
        Ok(password)
    }
}
