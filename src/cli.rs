//! Command-line interface: `run`, `crds`, `report`, `plan`, `join`/`unjoin` and the data
//! `mover`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::api;

/// Places each country's data only on compliant clusters, relocates it safely and proves where
/// it lives.
#[derive(Parser, Debug)]
#[command(name = "residency-operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator against a management cluster (kubeconfig or in-cluster config).
    Run(RunArgs),
    /// Print every CustomResourceDefinition as YAML, or write one file per CRD into a directory.
    Crds {
        /// Write `<plural>.<group>.yaml` files into this directory instead of printing.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Print a Markdown reference of the CRDs (from their doc comments) instead.
        #[arg(long, conflicts_with = "output_dir")]
        markdown: bool,
    },
    /// Where each country's data lives, with the evidence and the violations, read from the
    /// management cluster.
    Report {
        /// Kubeconfig of the management cluster (default: in-cluster config, then $KUBECONFIG).
        #[arg(long, env = "RESIDENCY_KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// Context in the kubeconfig.
        #[arg(long)]
        context: Option<String>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ReportFormat::Text)]
        output: ReportFormat,
    },
    /// The data mover, run in Pods on the members during a Storage workload's move (also usable
    /// by hand): manifests, serving a volume, pulling it, making a move's keys.
    #[command(subcommand)]
    Mover(MoverCommand),
    /// Join a member cluster with a least-privilege identity: create it on the member (its
    /// ServiceAccount, roles and guard policy), obtain its credential and store it as the
    /// member's kubeconfig Secret (and MemberCluster with --country) on the management cluster.
    Join(crate::join::JoinArgs),
    /// Remove what `join` created (never the workloads' objects or data).
    Unjoin(crate::join::UnjoinArgs),
    /// Validate MemberClusters, ResidencyPolicies and ResidentWorkloads from YAML files and print
    /// where each workload would be placed. Exit code: 0 all placeable, 1 some workload
    /// unplaceable or in conflict, 2 invalid input.
    Plan {
        /// Files or directories (searched for *.yaml / *.yml) of multi-document YAML.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
        output: Format,
    },
}

/// `mover` subcommands.
#[derive(Subcommand, Debug)]
pub enum MoverCommand {
    /// Print the manifest digest and totals of a directory as JSON (`--entries` lists every
    /// entry).
    Manifest {
        /// The directory (a mounted volume).
        #[arg(long)]
        dir: PathBuf,
        /// Include every entry.
        #[arg(long)]
        entries: bool,
    },
    /// Serve a directory to the destinations of a move (mutual TLS with the move's keys).
    Serve {
        /// The directory (the source volume).
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:9443")]
        listen: String,
        /// Directory with the move's keys (ca.crt, server.crt, server.key, ...).
        #[arg(long)]
        keys: PathBuf,
        /// Exit after this many connections (default: serve until stopped).
        #[arg(long)]
        connections: Option<usize>,
    },
    /// Pull a served directory into a local one (incremental), print the report as JSON.
    Pull {
        /// The directory (the destination volume).
        #[arg(long)]
        dir: PathBuf,
        /// The source's address (host:port).
        #[arg(long)]
        from: String,
        /// Directory with the move's keys.
        #[arg(long)]
        keys: PathBuf,
        /// Connections in parallel.
        #[arg(long, default_value_t = 2)]
        parallel: usize,
    },
    /// Make new keys for one move into a directory.
    Keys {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Options of `run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Kubeconfig of the management cluster (default: in-cluster config, then $KUBECONFIG).
    #[arg(long, env = "RESIDENCY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// The operator's namespace: member kubeconfig Secrets are read only from here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "residency-system")]
    pub namespace: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_addr: std::net::SocketAddr,
    /// Maximum concurrent reconciles per controller.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u16,
    /// Maximum workloads relocating at once (placed on new clusters while they leave others);
    /// one policy edit that moves more proceeds in waves, the others wait with
    /// `Reconciling=True, reason=RelocationQueued`.
    #[arg(long, default_value_t = 32)]
    pub max_relocations: usize,
    /// Seconds between member probes (reachability and location attestation).
    #[arg(long, default_value_t = 10)]
    pub probe_interval: u64,
    /// The image of the data mover Pods run on the members during a data move
    /// (`spec.dataMigration: CopyAndVerify`): the operator's own image, which the Helm chart
    /// sets. Without it no data move starts (the workload says why).
    #[arg(long, env = "RESIDENCY_MOVER_IMAGE")]
    pub mover_image: Option<String>,
    /// Allow member kubeconfigs with exec or auth-provider plugins.
    #[arg(long)]
    pub allow_exec_plugins: bool,
    /// Allow member kubeconfigs with insecure-skip-tls-verify or plain http.
    #[arg(long)]
    pub allow_insecure_tls: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,
    /// Run several replicas: only the holder of the Lease `residency-operator` in --namespace
    /// reconciles and writes.
    #[arg(long)]
    pub leader_elect: bool,
    /// This replica's identity (default: $POD_NAME, else hostname and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Exit when standard input closes (lets a test harness own the process).
    #[arg(long, hide = true)]
    pub exit_on_stdin_close: bool,
}

/// Output formats of `report`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    /// Human-readable text.
    Text,
    /// JSON for machines.
    Json,
    /// Markdown, for audit evidence.
    Markdown,
}

/// Output formats of `plan`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// JSON for machines.
    Json,
}

/// Runs a command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run_operator(args))?;
            Ok(0)
        }
        Command::Crds {
            output_dir,
            markdown,
        } => {
            if markdown {
                print!("{}", api::reference::markdown(&api::crds()));
            } else {
                write_crds(output_dir)?;
            }
            Ok(0)
        }
        Command::Report {
            kubeconfig,
            context,
            output,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(report(kubeconfig, context, output))?;
            Ok(0)
        }
        Command::Mover(cmd) => mover(cmd),
        Command::Join(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(crate::join::join(args))?;
            Ok(0)
        }
        Command::Unjoin(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(crate::join::unjoin(args))?;
            Ok(0)
        }
        Command::Plan { files, output } => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            Ok(crate::plan::run(&files, output == Format::Json, &mut out)?)
        }
    }
}

fn mover(cmd: MoverCommand) -> anyhow::Result<i32> {
    use crate::mover::{manifest, tls, transfer};
    let print = |v: serde_json::Value| -> anyhow::Result<i32> {
        println!("{}", serde_json::to_string(&v)?);
        Ok(0)
    };
    match cmd {
        MoverCommand::Manifest { dir, entries } => {
            let m = manifest::scan(&dir).map_err(|e| crate::mover::Error::io(&dir, e))?;
            let mut v = serde_json::json!({"digest": m.digest(), "totals": m.totals()});
            if entries {
                v["entries"] = serde_json::to_value(&m.entries)?;
            }
            print(v)
        }
        MoverCommand::Serve {
            dir,
            listen,
            keys,
            connections,
        } => {
            let config = tls::server_config(&tls::read(&keys)?)?;
            let listener = std::net::TcpListener::bind(&listen)?;
            eprintln!("serving {} on {listen}", dir.display());
            transfer::serve(&dir, listener, config, connections)?;
            Ok(0)
        }
        MoverCommand::Pull {
            dir,
            from,
            keys,
            parallel,
        } => {
            let config = tls::client_config(&tls::read(&keys)?)?;
            let report = transfer::pull(&dir, &from, config, parallel)?;
            print(serde_json::to_value(report)?)
        }
        MoverCommand::Keys { out } => {
            tls::MoveKeys::generate()?.write(&out)?;
            Ok(0)
        }
    }
}

async fn report(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    output: ReportFormat,
) -> anyhow::Result<()> {
    use kube::api::{Api, ListParams};
    let config = mgmt_config(&kubeconfig, &context).await?;
    let client = kube::Client::try_from(config)?;
    let clusters = Api::<api::MemberCluster>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let workloads = Api::<api::ResidentWorkload>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let policies = Api::<api::ResidencyPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let moves = Api::<api::DataMove>::all(client)
        .list(&ListParams::default())
        .await?
        .items;
    let report = crate::report::build(&clusters, &workloads, &policies, &moves);
    match output {
        ReportFormat::Text => print!("{}", crate::report::text(&report)),
        ReportFormat::Markdown => print!("{}", crate::report::markdown(&report)),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

/// The management cluster's client configuration: the kubeconfig file and context given, a
/// context of $KUBECONFIG, or the in-cluster configuration.
async fn mgmt_config(
    kubeconfig: &Option<PathBuf>,
    context: &Option<String>,
) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            let options = kube::config::KubeConfigOptions {
                context: context.clone(),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if context.is_some() => {
            let options = kube::config::KubeConfigOptions {
                context: context.clone(),
                ..Default::default()
            };
            kube::Config::from_kubeconfig(&options).await?
        }
        None => kube::Config::infer().await?,
    })
}

async fn run_operator(args: RunArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    crate::telemetry::init(args.log_format);
    let config = mgmt_config(&args.kubeconfig, &args.context).await?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let client = kube::Client::try_from(crate::fleet::identify(config, &identity))?;
    let settings = crate::controller::Settings {
        namespace: args.namespace.clone(),
        connection_policy: crate::fleet::kubeconfig::ConnectionPolicy {
            allow_exec: args.allow_exec_plugins,
            allow_insecure_tls: args.allow_insecure_tls,
        },
        probe_interval: std::time::Duration::from_secs(args.probe_interval.max(1)),
        concurrency: args.concurrency.max(1),
        max_relocations: args.max_relocations.max(1),
        mover_image: args.mover_image.clone().filter(|i| !i.is_empty()),
        instance: identity.clone(),
        ..Default::default()
    };
    let metrics = crate::metrics::Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let standby = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_state = crate::http::HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        standby: standby.clone(),
    };
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(crate::http::serve(args.http_addr, http_state, async move {
        let _ = http_stop.wait_for(|s| *s).await;
    }));
    if args.exit_on_stdin_close {
        // a plain thread: a blocking read must not occupy the async runtime
        std::thread::spawn(|| {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            tracing::info!("standard input closed; exiting");
            std::process::exit(0);
        });
    }
    tracing::info!(namespace = %args.namespace, %identity, "starting residency-operator");
    let fence = Arc::new(if args.leader_elect {
        crate::leader::Fence::closed()
    } else {
        crate::leader::Fence::open()
    });
    let result = if args.leader_elect {
        let cfg = crate::leader::Config::new(&args.namespace, &identity);
        standby.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            () = crate::leader::acquire(&client, &cfg, &fence) => {}
            () = shutdown_signal() => {
                tracing::info!("stopping while standing by");
                let _ = stop_tx.send(true);
                let _ = http.await;
                return Ok(());
            }
        }
        standby.store(false, std::sync::atomic::Ordering::Relaxed);
        let run =
            crate::controller::runner::run(client.clone(), settings, metrics, ready, fence.clone());
        tokio::select! {
            result = run => {
                crate::leader::release(&client, &cfg).await;
                result.map_err(anyhow::Error::from)
            }
            lost = crate::leader::keep(&client, &cfg, &fence) => {
                tracing::error!(error = %lost, "stopping: only the leader may write");
                Err(anyhow::Error::from(lost))
            }
        }
    } else {
        crate::controller::runner::run(client, settings, metrics, ready, fence)
            .await
            .map_err(anyhow::Error::from)
    };
    let _ = stop_tx.send(true);
    let _ = http.await;
    result
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn write_crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let crds = api::crds();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for crd in crds {
                let name = crd.metadata.name.clone().unwrap_or_default();
                let path = dir.join(format!("{name}.yaml"));
                std::fs::write(&path, crd_yaml(&crd)?)?;
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            for crd in crds {
                write!(out, "---\n{}", crd_yaml(&crd)?)?;
            }
        }
    }
    Ok(())
}

/// One CRD as YAML, with a header saying where it comes from.
pub fn crd_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> anyhow::Result<String> {
    Ok(format!(
        "# Generated by `residency-operator crds --output-dir crds`; do not edit.\n{}",
        serde_yaml::to_string(crd)?
    ))
}
