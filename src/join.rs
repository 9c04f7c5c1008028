//! `join`, `join --rotate` and `unjoin` (thin I/O): make the operator's least-privilege
//! identity on a member ([`crate::access`] says what it holds), obtain its credential, and
//! store it on the management cluster as the member's kubeconfig Secret.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::access::{self, Grant};

/// Field manager of what `join` writes.
pub const MANAGER: &str = "residency-join";
/// Annotation of the kubeconfig Secret: the long-lived token Secret in use on the member, or
/// when the time-bound token expires.
pub const CREDENTIAL_ANNOTATION: &str = "residency.io/member-credential";

/// What went wrong in `join` or `unjoin`.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The kubeconfig cannot be read or has no such context.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// A request to a cluster failed.
    #[error("{cluster}: {action}: {source}")]
    Api {
        /// `member` or `management`.
        cluster: &'static str,
        /// What was being done.
        action: String,
        /// The error.
        source: kube::Error,
    },
    /// The member did not issue a token in time.
    #[error("the member issued no token for {0} within 30 s")]
    NoToken(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
}

impl JoinError {
    /// Stable category.
    pub fn category(&self) -> &'static str {
        match self {
            JoinError::Kubeconfig(_) => "kubeconfig",
            JoinError::Api { .. } => "api",
            JoinError::NoToken(_) => "no_token",
            JoinError::Invalid(_) => "invalid",
        }
    }
}

fn api_err(cluster: &'static str, action: String) -> impl FnOnce(kube::Error) -> JoinError {
    move |source| JoinError::Api {
        cluster,
        action,
        source,
    }
}

/// Options of `join`.
#[derive(clap::Args, Debug, Clone)]
pub struct JoinArgs {
    /// Kubeconfig holding the member's context (default: $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The member's context (an admin of the member runs `join` once).
    #[arg(long, required_unless_present = "print_access")]
    pub context: Option<String>,
    /// The MemberCluster name.
    #[arg(long, required_unless_present = "print_access")]
    pub name: Option<String>,
    /// Context of the management cluster (default: the kubeconfig's current context).
    #[arg(long)]
    pub management_context: Option<String>,
    /// Kubeconfig of the management cluster (default: --kubeconfig).
    #[arg(long)]
    pub management_kubeconfig: Option<PathBuf>,
    /// The operator's namespace on the management cluster (holds the kubeconfig Secret).
    #[arg(long, default_value = "residency-system")]
    pub operator_namespace: String,
    /// Also write the MemberCluster, in this country (ISO 3166-1 alpha-2).
    #[arg(long)]
    pub country: Option<String>,
    /// The MemberCluster's region (with --country).
    #[arg(long, requires = "country")]
    pub region: Option<String>,
    /// Attested node regions of the MemberCluster (with --country; repeatable).
    #[arg(long = "node-region", requires = "country")]
    pub node_regions: Vec<String>,
    /// Lifetime of the time-bound token (TokenRequest), in hours.
    #[arg(long, default_value_t = 24 * 90, conflicts_with = "long_lived_token")]
    pub token_hours: u32,
    /// Use a long-lived token Secret on the member instead of a time-bound token.
    #[arg(long)]
    pub long_lived_token: bool,
    /// A custom kind the workloads place there, as `<plural>.<group>` (repeatable).
    #[arg(long = "resource")]
    pub resources: Vec<String>,
    /// Let the identity list and watch Secrets in every namespace, so a country-labelled Secret
    /// is found anywhere (a list permission on Secrets reads them all).
    #[arg(long)]
    pub inventory_secrets: bool,
    /// Renew the credential of a joined member (waits until the operator uses it, then
    /// removes the old long-lived token).
    #[arg(long)]
    pub rotate: bool,
    /// Write nothing; print the member's objects and the management ones (token left out).
    #[arg(long)]
    pub dry_run: bool,
    /// Print the management cluster's Secret and MemberCluster as YAML instead of writing them
    /// (GitOps: the Secret holds the member credential, keep it sealed).
    #[arg(short = 'o', long = "output", value_parser = ["yaml"])]
    pub output: Option<String>,
    /// Print the permissions the identity holds and why (Markdown), and exit.
    #[arg(long)]
    pub print_access: bool,
}

/// Options of `unjoin`.
#[derive(clap::Args, Debug, Clone)]
pub struct UnjoinArgs {
    /// Kubeconfig holding the member's context (default: $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The member's context.
    #[arg(long)]
    pub context: String,
    /// The MemberCluster name.
    #[arg(long)]
    pub name: String,
    /// Context of the management cluster (default: the kubeconfig's current context).
    #[arg(long)]
    pub management_context: Option<String>,
    /// Kubeconfig of the management cluster (default: --kubeconfig).
    #[arg(long)]
    pub management_kubeconfig: Option<PathBuf>,
    /// The operator's namespace on the management cluster.
    #[arg(long, default_value = "residency-system")]
    pub operator_namespace: String,
}

fn read_kubeconfig(path: &Option<PathBuf>) -> Result<Kubeconfig, JoinError> {
    match path {
        Some(p) => Kubeconfig::read_from(p),
        None => Kubeconfig::read(),
    }
    .map_err(|e| JoinError::Kubeconfig(e.to_string()))
}

async fn client_for(kubeconfig: &Kubeconfig, context: Option<&str>) -> Result<Client, JoinError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
        .await
        .map_err(|e| JoinError::Kubeconfig(e.to_string()))?;
    Client::try_from(config).map_err(|e| JoinError::Kubeconfig(e.to_string()))
}

/// The member's client (`context` of `source`) and the management cluster's (its own
/// kubeconfig when given, else `source`).
async fn clients(
    source: &Kubeconfig,
    context: &str,
    management_kubeconfig: &Option<PathBuf>,
    management_context: Option<&str>,
) -> Result<(Client, Client), JoinError> {
    let member = client_for(source, Some(context)).await?;
    let mgmt = match management_kubeconfig {
        Some(_) => client_for(&read_kubeconfig(management_kubeconfig)?, management_context).await?,
        None => client_for(source, management_context).await?,
    };
    Ok((member, mgmt))
}

fn grant_of(args: &JoinArgs) -> Result<Grant, JoinError> {
    let mut grant = Grant::new();
    grant.inventory_secrets = args.inventory_secrets;
    for r in &args.resources {
        let (plural, group) = r.split_once('.').ok_or_else(|| {
            JoinError::Invalid(format!(
                "--resource {r}: expected <plural>.<group>, e.g. widgets.example.com"
            ))
        })?;
        grant
            .resources
            .push((group.to_string(), plural.to_string()));
    }
    Ok(grant)
}

fn resource_of(v: &Value) -> ApiResource {
    let gvk = GroupVersionKind::try_from(&kube::core::TypeMeta {
        api_version: v["apiVersion"].as_str().unwrap_or_default().to_string(),
        kind: v["kind"].as_str().unwrap_or_default().to_string(),
    })
    .unwrap_or_else(|_| GroupVersionKind::gvk("", "v1", "ConfigMap"));
    let plural = match gvk.kind.as_str() {
        "ValidatingAdmissionPolicy" => "validatingadmissionpolicies".to_string(),
        "ValidatingAdmissionPolicyBinding" => "validatingadmissionpolicybindings".to_string(),
        k => format!("{}s", k.to_lowercase()),
    };
    ApiResource::from_gvk_with_plural(&gvk, &plural)
}

fn api_for(client: &Client, v: &Value) -> Api<DynamicObject> {
    let ar = resource_of(v);
    match v["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

async fn apply(client: &Client, v: &Value, cluster: &'static str) -> Result<(), JoinError> {
    let name = v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let kind = v["kind"].as_str().unwrap_or_default().to_string();
    api_for(client, v)
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(v),
        )
        .await
        .map_err(api_err(cluster, format!("apply {kind} {name}")))?;
    Ok(())
}

/// A kubeconfig for the member with `token`, from the member context's cluster entry.
fn member_kubeconfig(
    source: &Kubeconfig,
    context: &str,
    name: &str,
    token: &str,
) -> Result<String, JoinError> {
    let ctx = source
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| JoinError::Kubeconfig(format!("no context {context}")))?;
    let mut cluster = source
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| JoinError::Kubeconfig(format!("no cluster {}", ctx.cluster)))?;
    if let Some(path) = cluster.certificate_authority.take() {
        use base64::Engine;
        let pem = std::fs::read(&path)
            .map_err(|e| JoinError::Kubeconfig(format!("certificate-authority {path}: {e}")))?;
        cluster.certificate_authority_data =
            Some(base64::engine::general_purpose::STANDARD.encode(pem));
    }
    let user = format!("{name}-residency-operator");
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
        "current-context": name,
    });
    serde_yaml::to_string(&kubeconfig).map_err(|e| JoinError::Invalid(e.to_string()))
}

/// The credential: a time-bound token, or a long-lived token Secret (`rotate` makes a new one
/// beside the old). Returns the token and what the kubeconfig Secret notes about it.
async fn credential(
    member: &Client,
    grant: &Grant,
    args: &JoinArgs,
) -> Result<(String, String), JoinError> {
    if args.long_lived_token {
        let suffix = if args.rotate {
            format!(
                "-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default()
            )
        } else {
            String::new()
        };
        let name = format!("{}-token{suffix}", grant.service_account);
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": grant.namespace,
                         "labels": {access::JOINED_LABEL: args.name.clone().unwrap_or_default()},
                         "annotations": {"kubernetes.io/service-account.name": grant.service_account}},
            "type": "kubernetes.io/service-account-token"
        });
        apply(member, &secret, "member").await?;
        let api: Api<Secret> = Api::namespaced(member.clone(), &grant.namespace);
        for _ in 0..120 {
            let s = api
                .get(&name)
                .await
                .map_err(api_err("member", format!("get Secret {name}")))?;
            if let Some(t) = s.data.as_ref().and_then(|d| d.get("token")) {
                return Ok((String::from_utf8_lossy(&t.0).into_owned(), name));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        return Err(JoinError::NoToken(name));
    }
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(i64::from(args.token_hours) * 3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(member.clone(), &grant.namespace);
    let issued: TokenRequest = api
        .create_subresource(
            "token",
            &grant.service_account,
            &PostParams::default(),
            &request,
        )
        .await
        .map_err(api_err("member", "request a token".into()))?;
    let status = issued
        .status
        .ok_or_else(|| JoinError::NoToken(grant.service_account.clone()))?;
    Ok((
        status.token,
        format!("token expires {}", status.expiration_timestamp.0),
    ))
}

/// The management cluster's objects: the kubeconfig Secret, and the MemberCluster with
/// `--country`.
fn management_objects(args: &JoinArgs, grant: &Grant, kubeconfig: &str, note: &str) -> Vec<Value> {
    let name = args.name.clone().unwrap_or_default();
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": format!("{name}-kubeconfig"), "namespace": args.operator_namespace,
            "labels": {access::JOINED_LABEL: name},
            "annotations": {
                access::SERVICE_ACCOUNT_ANNOTATION: format!("{}/{}", grant.namespace, grant.service_account),
                access::WORKLOAD_ROLE_ANNOTATION: access::WORKLOAD_ROLE,
                CREDENTIAL_ANNOTATION: note,
            }
        },
        "stringData": {"kubeconfig": kubeconfig}
    })];
    if let Some(country) = &args.country {
        let mut spec = json!({
            "location": {"country": country, "region": args.region.clone().unwrap_or_default()},
            "connection": {"kubeconfigSecretRef": {"name": format!("{name}-kubeconfig")}},
        });
        if !args.node_regions.is_empty() {
            spec["attestation"] = json!({"nodeRegions": args.node_regions});
        }
        out.push(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "MemberCluster",
            "metadata": {"name": name, "labels": {access::JOINED_LABEL: name}},
            "spec": spec
        }));
    }
    out
}

fn print_yaml(objects: &[Value]) -> Result<(), JoinError> {
    for o in objects {
        let text = serde_yaml::to_string(o).map_err(|e| JoinError::Invalid(e.to_string()))?;
        println!("---\n{}", text.trim_end());
    }
    Ok(())
}

/// Runs `join`.
pub async fn join(args: JoinArgs) -> Result<(), JoinError> {
    let grant = grant_of(&args)?;
    if args.print_access {
        print!("{}", access::markdown(&grant));
        return Ok(());
    }
    let (Some(context), Some(name)) = (args.context.clone(), args.name.clone()) else {
        return Err(JoinError::Invalid(
            "--context and --name are required".into(),
        ));
    };
    let source = read_kubeconfig(&args.kubeconfig)?;
    let member_objects = access::member_objects(&grant, &name);
    if args.dry_run {
        print_yaml(&member_objects)?;
        let kubeconfig = member_kubeconfig(&source, &context, &name, "<issued by join>")?;
        return print_yaml(&management_objects(&args, &grant, &kubeconfig, "dry run"));
    }
    let (member, mgmt) = clients(
        &source,
        &context,
        &args.management_kubeconfig,
        args.management_context.as_deref(),
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(mgmt.clone(), &args.operator_namespace);
    let secret_name = format!("{name}-kubeconfig");
    let before = secrets
        .get_opt(&secret_name)
        .await
        .map_err(api_err("management", format!("get Secret {secret_name}")))?;
    if args.rotate && before.is_none() {
        return Err(JoinError::Invalid(format!(
            "--rotate: {name} was not joined (no Secret {}/{secret_name})",
            args.operator_namespace
        )));
    }
    if !args.rotate {
        for o in &member_objects {
            apply(&member, o, "member").await?;
        }
        eprintln!(
            "member {context}: ServiceAccount {}/{}, ClusterRoles {} and {}, guard policy {} applied",
            grant.namespace,
            grant.service_account,
            access::CLUSTER_ROLE,
            access::WORKLOAD_ROLE,
            access::GUARD
        );
    }
    let (token, note) = credential(&member, &grant, &args).await?;
    let kubeconfig = member_kubeconfig(&source, &context, &name, &token)?;
    let objects = management_objects(&args, &grant, &kubeconfig, &note);
    if args.output.is_some() {
        return print_yaml(&objects);
    }
    let mut written = None;
    for o in &objects {
        apply(&mgmt, o, "management").await?;
        if o["kind"] == "Secret" {
            written = secrets
                .get(&secret_name)
                .await
                .map_err(api_err("management", format!("get Secret {secret_name}")))?
                .resource_version();
        }
    }
    eprintln!(
        "management: Secret {}/{secret_name} written ({note}){}",
        args.operator_namespace,
        if args.country.is_some() {
            format!(", MemberCluster {name} applied")
        } else {
            String::new()
        }
    );
    if args.rotate {
        let old = before
            .as_ref()
            .and_then(|s| s.annotations().get(CREDENTIAL_ANNOTATION).cloned())
            .filter(|n| !n.starts_with("token expires") && *n != note);
        await_in_use(&mgmt, &name, written.as_deref()).await?;
        if let Some(old) = old {
            let api: Api<Secret> = Api::namespaced(member.clone(), &grant.namespace);
            match api.delete(&old, &DeleteParams::default()).await {
                Ok(_) => eprintln!("member {context}: old token Secret {old} deleted"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api_err("member", format!("delete Secret {old}"))(e)),
            }
        } else {
            eprintln!("the previous time-bound token stays valid until it expires");
        }
    }
    Ok(())
}

/// Waits until the operator's probe of `name` connected with the kubeconfig Secret version
/// `version` (the MemberCluster's `status.credentialVersion`).
async fn await_in_use(mgmt: &Client, name: &str, version: Option<&str>) -> Result<(), JoinError> {
    let api: Api<crate::api::MemberCluster> = Api::all(mgmt.clone());
    for _ in 0..240 {
        let mc = api
            .get_opt(name)
            .await
            .map_err(api_err("management", format!("get MemberCluster {name}")))?;
        let Some(mc) = mc else {
            return Ok(()); // nothing uses it yet
        };
        let status = mc.status.unwrap_or_default();
        if status.credential_version.as_deref() == version
            && crate::api::conditions::is_true(
                &status.conditions,
                crate::api::conditions::types::READY,
            )
        {
            eprintln!("the operator connects to {name} with the new credential");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(JoinError::Invalid(format!(
        "the operator did not connect to {name} with the new credential within 2 minutes; the old credential was kept"
    )))
}

/// Runs `unjoin`: removes what `join` made on the member (the identity, its roles and guard,
/// the RoleBindings the operator made in workload namespaces) and the kubeconfig Secret (and
/// the MemberCluster when `join` wrote it). Never a workload's object or data.
pub async fn unjoin(args: UnjoinArgs) -> Result<(), JoinError> {
    let source = read_kubeconfig(&args.kubeconfig)?;
    let (member, mgmt) = clients(
        &source,
        &args.context,
        &args.management_kubeconfig,
        args.management_context.as_deref(),
    )
    .await?;
    let grant = Grant::new();
    let gone = |r: Result<_, kube::Error>, what: String, cluster: &'static str| match r {
        Ok(_) => {
            eprintln!("{cluster}: {what} removed");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_err(cluster, format!("delete {what}"))(e)),
    };
    // the operator's own bindings in workload namespaces
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::all(member.clone());
    let selector = format!(
        "{}={}",
        crate::api::labels::MANAGED_BY,
        crate::api::labels::MANAGED_BY_VALUE
    );
    for b in bindings
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_err("member", "list RoleBindings".into()))?
    {
        if b.name_any() != access::CLUSTER_ROLE || b.role_ref.name != access::WORKLOAD_ROLE {
            continue;
        }
        let ns = b.namespace().unwrap_or_default();
        let api: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
            Api::namespaced(member.clone(), &ns);
        gone(
            api.delete(&b.name_any(), &DeleteParams::default())
                .await
                .map(|_| ()),
            format!("RoleBinding {ns}/{}", b.name_any()),
            "member",
        )?;
    }
    // the token Secrets join made (the member namespace itself stays: it may hold more)
    let tokens: Api<Secret> = Api::namespaced(member.clone(), &grant.namespace);
    for t in tokens
        .list(&ListParams::default().labels(&format!("{}={}", access::JOINED_LABEL, args.name)))
        .await
        .map_err(api_err("member", "list token Secrets".into()))?
    {
        gone(
            tokens
                .delete(&t.name_any(), &DeleteParams::default())
                .await
                .map(|_| ()),
            format!("Secret {}/{}", grant.namespace, t.name_any()),
            "member",
        )?;
    }
    let objects = access::member_objects(&grant, &args.name);
    for o in objects.iter().rev().filter(|o| o["kind"] != "Namespace") {
        let what = format!(
            "{} {}",
            o["kind"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        );
        let r = api_for(&member, o)
            .delete(
                o["metadata"]["name"].as_str().unwrap_or_default(),
                &DeleteParams::default(),
            )
            .await
            .map(|_| ());
        gone(r, what, "member")?;
    }
    let secrets: Api<Secret> = Api::namespaced(mgmt.clone(), &args.operator_namespace);
    let secret_name = format!("{}-kubeconfig", args.name);
    gone(
        secrets
            .delete(&secret_name, &DeleteParams::default())
            .await
            .map(|_| ()),
        format!("Secret {}/{secret_name}", args.operator_namespace),
        "management",
    )?;
    let clusters: Api<crate::api::MemberCluster> = Api::all(mgmt);
    if let Some(mc) = clusters
        .get_opt(&args.name)
        .await
        .map_err(api_err("management", "get MemberCluster".into()))?
        && mc.labels().get(access::JOINED_LABEL) == Some(&args.name)
    {
        gone(
            clusters
                .delete(&args.name, &DeleteParams::default())
                .await
                .map(|_| ()),
            format!(
                "MemberCluster {} (its finalizer waits while it holds data)",
                args.name
            ),
            "management",
        )?;
    }
    Ok(())
}
