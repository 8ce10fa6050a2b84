//! The `pushpull` command: serve a broker over every transport, and publish, fetch and
//! subscribe from the command line.

/// jemalloc gives the memory of closed connections back to the system (its dirty pages decay
/// within seconds); glibc's allocator keeps each arena's high-water mark for good, so a spike
/// of connections left the server at its peak forever. Measured by `pushpull bench churn`
/// (docs/benchmarks.md, "Memory after a spike").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod operator;
mod output;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use pushpull::{Client, ClientConfig, Cursor, Error, ErrorKind, Publication, ServerConfig, Topic};

use crate::output::Format;

/// Get data from a server to its clients, by pull or push.
#[derive(Parser)]
#[command(name = "pushpull", version, about, propagate_version = true)]
struct Cli {
    /// How to write the log on stderr: `text` or `json` (one object a line) [default: the
    /// server config's `log_format`, else text]. `PUSHPULL_LOG` filters it (`debug`, …).
    #[arg(long, global = true, value_name = "FORMAT", env = "PUSHPULL_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How a client command reaches the server.
#[derive(clap::Args, Clone)]
struct Connection {
    /// The server's base URL [default: the config file's, else http://127.0.0.1:7070].
    #[arg(long, env = "PUSHPULL_URL")]
    url: Option<String>,
    /// The transport: a name such as `poll`, or `auto` [default: the config file's, else auto].
    #[arg(long, short, env = "PUSHPULL_TRANSPORT")]
    transport: Option<String>,
    /// A client config file (TOML); `--url` and `--transport` given explicitly (or by their
    /// environment variables) win over it.
    #[arg(long, value_name = "FILE")]
    client_config: Option<PathBuf>,
    /// The bearer token to send (a JWT the server's `[auth]` accepts). Prefer the environment
    /// variable: command lines are visible to other users of the machine.
    #[arg(long, env = "PUSHPULL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// With `https://`: a PEM file of certificate authorities to trust besides the system's.
    #[arg(long, value_name = "FILE", env = "PUSHPULL_CA_FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the embedded memory broker over every enabled transport until Ctrl-C.
    Serve {
        /// A TOML config file; without one, the defaults serve on 127.0.0.1:7070.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The address to listen on, over the config's `listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Publish one message; prints its cursor.
    Publish {
        /// The topic.
        topic: String,
        /// The payload; `-` or nothing reads it from standard input.
        data: Option<String>,
        /// An event type for the message.
        #[arg(long, short)]
        event: Option<String>,
        /// The payload's media type.
        #[arg(long)]
        content_type: Option<String>,
        /// Print the whole receipt as JSON (topic, cursor, offset, timestamp).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Fetch one page of messages; prints one per line, and the next cursor on stderr.
    Fetch {
        /// The topic.
        topic: String,
        /// Where to start: a cursor, `beginning`, `latest`, `last:N` (the last N messages) or
        /// `since:TIME` (epoch milliseconds or RFC 3339).
        #[arg(long, default_value = "beginning")]
        after: String,
        /// The most messages to fetch.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// `text` (the payload per line) or `json` (one JSON object per line).
        #[arg(long, default_value = "text")]
        format: Format,
        #[command(flatten)]
        connection: Connection,
    },
    /// Who follows a topic: its members and its presence log's cursor, as JSON (follow the
    /// changes with `pushpull subscribe .presence:TOPIC --after CURSOR --format json`).
    Presence {
        /// The topic.
        topic: String,
        /// Only the counts: members, and distinct users among them.
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Measure the transports side by side against a server on 127.0.0.1 (runs the
    /// `pushpull-bench` binary installed beside this one: `pushpull bench --help`).
    #[command(disable_help_flag = true)]
    Bench {
        /// What `pushpull-bench` takes: `idle`, `compare`, `fanout`, `churn`, `soak`, `peers` …
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check or show a server config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Mint a token for development, signed with a key of the server's `[auth]`: prints it.
    Token(operator::TokenRequest),
    /// Print the man page (roff): `pushpull man > pushpull.1`.
    #[command(hide = true)]
    Man,
    /// Print a completion script for a shell: `pushpull completions bash > /etc/bash_completion.d/pushpull`.
    Completions {
        /// `bash`, `zsh`, `fish`, `elvish` or `powershell`.
        shell: clap_complete::Shell,
    },
    /// Follow a topic; prints one message per line until Ctrl-C (or `--count`).
    Subscribe {
        /// The topic; several topics, or a prefix (`orders:*`), follow them all on one
        /// connection (in text, each line then starts with the topic and a tab).
        #[arg(required = true, num_args = 1..)]
        topics: Vec<String>,
        /// Where to start: a cursor, `beginning` (the oldest retained message), `latest` (only
        /// what is published from now on), `last:N` (the last N messages, then follow) or
        /// `since:TIME` (epoch milliseconds or RFC 3339, then follow).
        #[arg(long, default_value = "beginning")]
        after: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// `text` (the payload per line) or `json` (one JSON object per line).
        #[arg(long, default_value = "text")]
        format: Format,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a server config file (and the `PUSHPULL_*` settings over it): prints `ok`, or every
    /// error with its key and exits with 2.
    Check {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Print the configuration `serve` would run with, one key a line, each with where its
    /// value came from (the file, a `PUSHPULL_*` variable, or the default); secrets masked.
    Show {
        /// A TOML config file; without one, the defaults and the environment.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` reads its config before the log starts, since the config may ask for JSON; a
    // broken one is reported by `serve` itself.
    let server_config = match &cli.command {
        Command::Serve { config, .. } => {
            Some(ServerConfig::load(config.as_deref(), std::env::vars()))
        }
        _ => None,
    };
    let format = match (cli.log_format, &server_config) {
        (Some(format), _) => format,
        (None, Some(Ok(config))) if config.log_format == pushpull::LogFormat::Json => {
            LogFormat::Json
        }
        (None, _) => LogFormat::Text,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PUSHPULL_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logger = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logger.json().with_current_span(true).init(),
        LogFormat::Text => {
            logger.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, server_config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            // 2 for what the user must fix in the command or config, 1 for the rest.
            match err.kind() {
                ErrorKind::Config
                | ErrorKind::InvalidTopic
                | ErrorKind::InvalidCursor
                | ErrorKind::BadRequest => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Runs `command`; `server_config` is what `serve` reads, read already.
async fn run(
    command: Command,
    server_config: Option<Result<ServerConfig, Error>>,
) -> Result<(), Error> {
    match command {
        Command::Serve { listen, .. } => {
            let config = server_config.expect("main reads the config of serve");
            serve(config?, listen).await
        }
        Command::Bench { args } => bench(&args).await,
        Command::Config(ConfigCommand::Check { file }) => operator::check(&file),
        Command::Config(ConfigCommand::Show { config }) => operator::show(config.as_deref()),
        Command::Token(request) => {
            println!("{}", operator::token(request)?);
            Ok(())
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).map_err(|e| {
                Error::new(ErrorKind::Closed, format!("cannot write the man page: {e}"))
            })
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "pushpull", &mut std::io::stdout());
            Ok(())
        }
        Command::Publish { topic, data, event, content_type, json, connection } => {
            let topic = Topic::new(topic)?;
            let payload = match data.as_deref() {
                None | Some("-") => read_stdin()?,
                Some(text) => bytes::Bytes::from(text.to_owned()),
            };
            let mut publication = Publication::new(payload);
            if let Some(event) = event {
                publication = publication.event(event);
            }
            if let Some(content_type) = content_type {
                publication = publication.content_type(content_type);
            }
            let client = connect(&connection).await?;
            let size = publication.payload().len();
            // A large payload takes a while to send: say so (on a terminal only).
            let progress = (size >= LARGE_PAYLOAD).then(|| {
                let spinner = indicatif::ProgressBar::new_spinner();
                spinner.set_message(format!("publishing {:.1} MiB", size as f64 / 1048576.0));
                spinner.enable_steady_tick(std::time::Duration::from_millis(120));
                spinner
            });
            let receipt = client.publish(&topic, publication).await;
            if let Some(progress) = progress {
                progress.finish_and_clear();
            }
            let receipt = receipt?;
            if json {
                println!(
                    "{}",
                    String::from_utf8_lossy(&pushpull_http::wire::encode_receipt(&receipt))
                );
            } else {
                println!("{}", receipt.cursor());
            }
            Ok(())
        }
        Command::Fetch { topic, after, limit, format, connection } => {
            let topic = Topic::new(topic)?;
            let cursor: Cursor = after.parse()?;
            let client = connect(&connection).await?;
            let page = client.fetch(&topic, cursor, limit).await?;
            let next = page.next;
            let mut out = std::io::stdout().lock();
            for delivery in page.into_deliveries() {
                output::print(&mut out, &delivery, format, false);
            }
            eprintln!("next: {next}");
            Ok(())
        }
        Command::Presence { topic, stats, connection } => {
            let topic = Topic::new(topic)?;
            let client = connect(&connection).await?;
            let presence = client.presence().ok_or_else(|| {
                Error::new(ErrorKind::Unsupported, "this transport's client cannot tell presence")
            })?;
            let json = match stats {
                true => serde_json::to_string(&presence.stats(&topic).await?),
                false => serde_json::to_string(&presence.snapshot(&topic).await?),
            };
            println!("{}", json.expect("presence serializes"));
            Ok(())
        }
        Command::Subscribe { topics, after, count, format, connection } => {
            let selectors: Vec<pushpull::Selector> =
                topics.iter().map(|t| t.parse()).collect::<Result<_, _>>()?;
            let cursor: Cursor = after.parse()?;
            let client = connect(&connection).await?;
            let many = !matches!(selectors.as_slice(), [pushpull::Selector::Topic(_)]);
            let mut subscription: futures::stream::BoxStream<
                '_,
                Result<pushpull::Delivery, Error>,
            > = match selectors.as_slice() {
                [pushpull::Selector::Topic(topic)] => {
                    client.subscribe(topic, cursor).await?.boxed()
                }
                _ => {
                    let request = pushpull::FollowRequest {
                        selectors: selectors.into_iter().map(|s| (s, cursor)).collect(),
                        resume: None,
                        // The server's own bound applies.
                        max_topics: usize::MAX,
                    };
                    pushpull::follow(client, request).await?.boxed()
                }
            };
            let mut seen = 0u64;
            loop {
                if count.is_some_and(|count| seen >= count) {
                    return Ok(());
                }
                let delivery = tokio::select! {
                    next = subscription.next() => next,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                let Some(delivery) = delivery else { return Ok(()) };
                let delivery = delivery?;
                if delivery.as_message().is_some() {
                    seen += 1;
                }
                output::print(&mut std::io::stdout().lock(), &delivery, format, many);
            }
        }
    }
}

async fn serve(
    mut config: ServerConfig,
    listen: Option<std::net::SocketAddr>,
) -> Result<(), Error> {
    if let Some(listen) = listen {
        config.listen = listen;
    }
    let server = pushpull::serve(&config).await?;
    let stop = shutdown_signal();
    let transports = pushpull::transports(&config);
    // Printed on stdout so scripts (and tests) can find the port when listening on port 0.
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let broker = &config.broker.kind;
    println!(
        "pushpull listening on {scheme}://{} (broker: {broker}, transports: {})",
        server.local_addr(),
        transports.join(", ")
    );
    stop.await;
    tracing::info!("shutting down; waiting for requests in flight");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves at Ctrl-C or SIGTERM. The handlers are installed when this is called, not when it
/// is first awaited: a signal that comes as soon as the server has said where it listens
/// drains the server instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn connect(connection: &Connection) -> Result<Arc<dyn Client>, Error> {
    let mut config = match &connection.client_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::new(ErrorKind::Config, format!("cannot read {}: {e}", path.display()))
            })?;
            ClientConfig::from_toml(&text).map_err(|e| {
                Error::new(ErrorKind::Config, format!("{}: {}", path.display(), e.message()))
            })?
        }
        None => ClientConfig::default(),
    };
    if let Some(url) = &connection.url {
        config.url.clone_from(url);
    }
    if let Some(transport) = &connection.transport {
        config.transport.clone_from(transport);
    }
    if let Some(token) = &connection.token {
        config.token = pushpull::BearerToken::fixed(token.clone());
    }
    if let Some(ca_file) = &connection.ca_file {
        config.ca_file = Some(ca_file.clone());
    }
    pushpull::connect(&config).await
}

/// Payloads from this size up get a progress line while they are read and sent.
const LARGE_PAYLOAD: usize = 8 * 1024 * 1024;

/// Reads the payload from standard input, with a byte count on stderr as it grows past
/// [`LARGE_PAYLOAD`] (indicatif draws nothing when stderr is not a terminal).
fn read_stdin() -> Result<bytes::Bytes, Error> {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut stdin = std::io::stdin().lock();
    let mut progress: Option<indicatif::ProgressBar> = None;
    loop {
        let read = stdin.read(&mut chunk).map_err(|e| {
            Error::new(ErrorKind::BadRequest, format!("cannot read standard input: {e}"))
        })?;
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if buffer.len() >= LARGE_PAYLOAD {
            let bar = progress.get_or_insert_with(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "reading the payload: {bytes} ({binary_bytes_per_sec})",
                    )
                    .expect("a valid template"),
                );
                bar
            });
            bar.set_position(buffer.len() as u64);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    Ok(buffer.into())
}

/// Runs the benchmark lab, `pushpull-bench`, from beside this binary, with `args`.
async fn bench(args: &[String]) -> Result<(), Error> {
    let own = std::env::current_exe()
        .map_err(|e| Error::new(ErrorKind::Config, format!("cannot find this binary: {e}")))?;
    let lab = own.with_file_name(format!("pushpull-bench{}", std::env::consts::EXE_SUFFIX));
    let status = tokio::process::Command::new(&lab).args(args).status().await.map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!(
                "pushpull bench runs {}, which cannot be started ({e}); it is installed with \
                 pushpull (cargo install pushpull-cli)",
                lab.display()
            ),
        )
    })?;
    if status.success() {
        return Ok(());
    }
    // Its own message is on stderr already; pass its exit code on.
    std::process::exit(status.code().unwrap_or(1));
}
