//! Connections to member clusters from the kubeconfigs held in Secrets.
//!
//! A kubeconfig is untrusted input: whoever can write the Secret chooses the server and the
//! credentials. It is therefore vetted before use:
//!
//! - exec plugins and auth providers (which run commands in the operator) are refused unless
//!   [`ConnectionPolicy::allow_exec`];
//! - `insecure-skip-tls-verify: true` and plain `http://` servers are refused unless
//!   [`ConnectionPolicy::allow_insecure_tls`];
//! - references to files (`certificate-authority`, `client-certificate`, `client-key`,
//!   `tokenFile`) are always refused: they would read the operator's own files, such as its
//!   service account token, and could send them to the kubeconfig's server.
//!
//! Errors name contexts, clusters and users only; they never carry tokens, passwords, keys or
//! certificate data.
//!
//! No network access: this only builds a [`kube::Config`].

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Timeout for establishing a connection to a member's API server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout for a member's API server to answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// What a member kubeconfig may contain beyond the safe defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectionPolicy {
    /// Allow users with an `exec` credential plugin or an `auth-provider`.
    pub allow_exec: bool,
    /// Allow clusters with `insecure-skip-tls-verify: true` or a plain `http://` server.
    pub allow_insecure_tls: bool,
}

/// Why a kubeconfig cannot be used to reach a member. Never contains credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The bytes are not a kubeconfig (not UTF-8, not YAML, or not shaped like a kubeconfig).
    #[error("the kubeconfig cannot be parsed{}", location(*.line, *.column))]
    Parse {
        /// 1-based line of the error, when known.
        line: Option<u64>,
        /// 1-based column of the error, when known.
        column: Option<u64>,
    },
    /// The kubeconfig has no `current-context`.
    #[error("the kubeconfig has no current-context")]
    NoCurrentContext,
    /// The current context, or the cluster or user it names, is not in the kubeconfig.
    #[error("the kubeconfig has no {entry} named '{name}'")]
    MissingEntry {
        /// `context`, `cluster` or `user`.
        entry: &'static str,
        /// The name that is missing.
        name: String,
    },
    /// The user authenticates with an exec plugin or an auth provider, which the policy refuses.
    #[error(
        "user '{user}' of the kubeconfig authenticates with an exec plugin or auth provider, which would run commands in the operator: refused (the operator does not allow exec plugins)"
    )]
    ExecPluginRefused {
        /// The user's name in the kubeconfig.
        user: String,
    },
    /// The cluster disables TLS verification or uses plain HTTP, which the policy refuses.
    #[error(
        "cluster '{cluster}' of the kubeconfig uses insecure-skip-tls-verify or a plain http:// server: refused (the operator does not allow insecure TLS)"
    )]
    InsecureTlsRefused {
        /// The cluster's name in the kubeconfig.
        cluster: String,
    },
    /// A cluster or user refers to a file on the operator's file system.
    #[error(
        "{entry} '{name}' of the kubeconfig refers to a file ({field}), which would be read from the operator's file system: refused, embed the data with {embedded} instead",
        embedded = embedded_field(field)
    )]
    FileReferenceRefused {
        /// `cluster` or `user`.
        entry: &'static str,
        /// The cluster's or user's name in the kubeconfig.
        name: String,
        /// The field naming a file, e.g. `client-key`.
        field: &'static str,
    },
    /// kube could not build a client configuration from the kubeconfig (credentials redacted).
    #[error("the kubeconfig cannot be used: {0}")]
    Config(String),
}

impl ConnectionError {
    /// A stable snake_case category, for metrics and condition reasons.
    pub fn category(&self) -> &'static str {
        match self {
            ConnectionError::Parse { .. } => "parse",
            ConnectionError::NoCurrentContext => "no_current_context",
            ConnectionError::MissingEntry { .. } => "missing_entry",
            ConnectionError::ExecPluginRefused { .. } => "exec_plugin_refused",
            ConnectionError::InsecureTlsRefused { .. } => "insecure_tls_refused",
            ConnectionError::FileReferenceRefused { .. } => "file_reference_refused",
            ConnectionError::Config(_) => "config",
        }
    }
}

/// The kubeconfig field that embeds what file field `field` refers to.
fn embedded_field(field: &str) -> &'static str {
    match field {
        "certificate-authority" => "certificate-authority-data",
        "client-certificate" => "client-certificate-data",
        "client-key" => "client-key-data",
        _ => "token",
    }
}

fn location(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(" (line {line}, column {column})"),
        (Some(line), None) => format!(" (line {line})"),
        _ => String::new(),
    }
}

/// Builds the client configuration for a member from the kubeconfig `bytes` (the content of
/// its Secret), using the kubeconfig's current context, after vetting it against `policy`.
///
/// The result has a connect timeout of 5 s and a read timeout of 15 s.
pub async fn config_from_kubeconfig(
    bytes: &[u8],
    policy: ConnectionPolicy,
) -> Result<kube::Config, ConnectionError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ConnectionError::Parse {
        line: None,
        column: None,
    })?;
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| match e {
        kube::config::KubeconfigError::Parse(inner) => {
            // The parser's own message may quote the document, so only its position is kept.
            let at = inner.location();
            ConnectionError::Parse {
                line: at.as_ref().map(|l| l.line()),
                column: at.as_ref().map(|l| l.column()),
            }
        }
        _ => ConnectionError::Parse {
            line: None,
            column: None,
        },
    })?;
    vet(&kubeconfig, policy)?;
    let secrets = secret_values(&kubeconfig);
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| ConnectionError::Config(redact(&e.to_string(), &secrets)))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    // Count the read timeout from each request, not from when a pooled connection went idle.
    config.reset_reader_on_write = true;
    Ok(config)
}

/// Checks the current context, its cluster and its user against `policy`.
fn vet(kubeconfig: &Kubeconfig, policy: ConnectionPolicy) -> Result<(), ConnectionError> {
    let context_name = kubeconfig
        .current_context
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or(ConnectionError::NoCurrentContext)?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| ConnectionError::MissingEntry {
            entry: "context",
            name: context_name.to_string(),
        })?;

    let cluster_name = context.cluster.as_str();
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| ConnectionError::MissingEntry {
            entry: "cluster",
            name: cluster_name.to_string(),
        })?;
    if !policy.allow_insecure_tls {
        let plain_http = cluster
            .server
            .as_deref()
            .is_some_and(|s| s.trim_start().to_ascii_lowercase().starts_with("http://"));
        if cluster.insecure_skip_tls_verify == Some(true) || plain_http {
            return Err(ConnectionError::InsecureTlsRefused {
                cluster: cluster_name.to_string(),
            });
        }
    }
    if cluster.certificate_authority.is_some() {
        return Err(ConnectionError::FileReferenceRefused {
            entry: "cluster",
            name: cluster_name.to_string(),
            field: "certificate-authority",
        });
    }

    // A context without a user connects anonymously.
    let Some(user_name) = context.user.as_deref().filter(|u| !u.is_empty()) else {
        return Ok(());
    };
    let user = kubeconfig
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .ok_or_else(|| ConnectionError::MissingEntry {
            entry: "user",
            name: user_name.to_string(),
        })?;
    let Some(auth) = user.auth_info.as_ref() else {
        return Ok(());
    };
    if !policy.allow_exec && (auth.exec.is_some() || auth.auth_provider.is_some()) {
        return Err(ConnectionError::ExecPluginRefused {
            user: user_name.to_string(),
        });
    }
    for (field, set) in [
        ("client-certificate", auth.client_certificate.is_some()),
        ("client-key", auth.client_key.is_some()),
        ("tokenFile", auth.token_file.is_some()),
    ] {
        if set {
            return Err(ConnectionError::FileReferenceRefused {
                entry: "user",
                name: user_name.to_string(),
                field,
            });
        }
    }
    Ok(())
}

/// Every string in the users of `kubeconfig` (tokens, passwords, keys, certificates, provider
/// and plugin settings), longest first, to be redacted from error messages.
fn secret_values(kubeconfig: &Kubeconfig) -> Vec<String> {
    fn collect(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) if s.len() >= 4 => out.push(s.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            serde_json::Value::Object(map) => map.values().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for user in &kubeconfig.auth_infos {
        if let Some(auth) = &user.auth_info
            && let Ok(value) = serde_json::to_value(auth)
        {
            collect(&value, &mut out);
        }
    }
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// `message` with every occurrence of each of `secrets` replaced by `[redacted]`.
fn redact(message: &str, secrets: &[String]) -> String {
    secrets.iter().fold(message.to_string(), |m, secret| {
        m.replace(secret.as_str(), "[redacted]")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cr3t-token";
    /// base64 of "-----BEGIN EC PRIVATE KEY-----\nsecret-key-material\n-----END EC PRIVATE KEY-----\n".
    const KEY_DATA: &str = "LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0tCnNlY3JldC1rZXktbWF0ZXJpYWwKLS0tLS1FTkQgRUMgUFJJVkFURSBLRVktLS0tLQo=";
    const PASSWORD: &str = "hunter2-password";

    /// A kubeconfig with a token user; `cluster_extra` and `user_extra` are extra YAML lines
    /// for the cluster and the user.
    fn kubeconfig(current: &str, cluster_extra: &str, user_extra: &str) -> String {
        format!(
            r#"apiVersion: v1
kind: Config
current-context: {current}
clusters:
- name: zrh-1
  cluster:
    server: https://zrh-1.example.net:6443
{cluster_extra}
contexts:
- name: zrh-1
  context:
    cluster: zrh-1
    user: zrh-1-admin
    namespace: residency
users:
- name: zrh-1-admin
  user:
    token: {TOKEN}
    password: {PASSWORD}
    client-key-data: {KEY_DATA}
{user_extra}
"#
        )
    }

    fn assert_no_secrets(err: &ConnectionError) {
        for text in [err.to_string(), format!("{err:?}")] {
            for secret in [TOKEN, KEY_DATA, PASSWORD, "secret-key-material"] {
                assert!(!text.contains(secret), "{secret} leaked in: {text}");
            }
        }
    }

    async fn refuse(yaml: &str, policy: ConnectionPolicy) -> ConnectionError {
        let err = config_from_kubeconfig(yaml.as_bytes(), policy)
            .await
            .expect_err("the kubeconfig should be refused");
        assert_no_secrets(&err);
        err
    }

    #[tokio::test]
    async fn token_user_gives_config_with_timeouts() {
        let yaml = kubeconfig("zrh-1", "", "");
        let config = config_from_kubeconfig(yaml.as_bytes(), ConnectionPolicy::default())
            .await
            .unwrap();
        assert_eq!(
            config.cluster_url.to_string(),
            "https://zrh-1.example.net:6443/"
        );
        assert_eq!(config.default_namespace, "residency");
        assert_eq!(config.connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(config.read_timeout, Some(Duration::from_secs(15)));
        assert!(!config.accept_invalid_certs);
        assert!(config.auth_info.token.is_some());
    }

    #[tokio::test]
    async fn unparsable_kubeconfig() {
        let yaml = format!("users:\n- name: x\n  user:\n    token: {TOKEN}\n   bad: [\n");
        let err = refuse(&yaml, ConnectionPolicy::default()).await;
        assert!(matches!(err, ConnectionError::Parse { .. }), "{err:?}");
        assert_eq!(err.category(), "parse");

        let wrong_shape = format!("users: {TOKEN}\n");
        let err = refuse(&wrong_shape, ConnectionPolicy::default()).await;
        assert_eq!(err.category(), "parse");

        let err = config_from_kubeconfig(&[0xff, 0xfe, 0x00], ConnectionPolicy::default())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ConnectionError::Parse {
                line: None,
                column: None
            }
        );
    }

    #[tokio::test]
    async fn no_current_context() {
        let yaml = kubeconfig("zrh-1", "", "").replace("current-context: zrh-1\n", "");
        let err = refuse(&yaml, ConnectionPolicy::default()).await;
        assert_eq!(err, ConnectionError::NoCurrentContext);
        assert_eq!(err.category(), "no_current_context");
        let err = refuse("", ConnectionPolicy::default()).await;
        assert_eq!(err, ConnectionError::NoCurrentContext);
    }

    #[tokio::test]
    async fn missing_context_cluster_or_user() {
        let err = refuse(&kubeconfig("gva-1", "", ""), ConnectionPolicy::default()).await;
        assert_eq!(
            err,
            ConnectionError::MissingEntry {
                entry: "context",
                name: "gva-1".into()
            }
        );
        assert_eq!(err.category(), "missing_entry");

        let yaml = kubeconfig("zrh-1", "", "").replace("cluster: zrh-1", "cluster: gone");
        let err = refuse(&yaml, ConnectionPolicy::default()).await;
        assert_eq!(
            err,
            ConnectionError::MissingEntry {
                entry: "cluster",
                name: "gone".into()
            }
        );

        let yaml = kubeconfig("zrh-1", "", "").replace("user: zrh-1-admin", "user: nobody");
        let err = refuse(&yaml, ConnectionPolicy::default()).await;
        assert_eq!(
            err,
            ConnectionError::MissingEntry {
                entry: "user",
                name: "nobody".into()
            }
        );
        assert_eq!(err.to_string(), "the kubeconfig has no user named 'nobody'");
    }

    #[tokio::test]
    async fn exec_plugin_and_auth_provider_refused_unless_allowed() {
        let exec = kubeconfig(
            "zrh-1",
            "",
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: [\"-c\", \"echo s3cr3t-token\"]\n      interactiveMode: Never",
        );
        let err = refuse(&exec, ConnectionPolicy::default()).await;
        assert_eq!(
            err,
            ConnectionError::ExecPluginRefused {
                user: "zrh-1-admin".into()
            }
        );
        assert_eq!(err.category(), "exec_plugin_refused");

        let provider = kubeconfig(
            "zrh-1",
            "",
            "    auth-provider:\n      name: oidc\n      config:\n        id-token: s3cr3t-token",
        );
        let err = refuse(&provider, ConnectionPolicy::default()).await;
        assert_eq!(err.category(), "exec_plugin_refused");

        let allowed = ConnectionPolicy {
            allow_exec: true,
            ..Default::default()
        };
        assert!(
            config_from_kubeconfig(exec.as_bytes(), allowed)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn insecure_tls_refused_unless_allowed() {
        let skip = kubeconfig("zrh-1", "    insecure-skip-tls-verify: true", "");
        let err = refuse(&skip, ConnectionPolicy::default()).await;
        assert_eq!(
            err,
            ConnectionError::InsecureTlsRefused {
                cluster: "zrh-1".into()
            }
        );
        assert_eq!(err.category(), "insecure_tls_refused");

        let http = kubeconfig("zrh-1", "", "").replace(
            "https://zrh-1.example.net:6443",
            "http://zrh-1.example.net:8080",
        );
        let err = refuse(&http, ConnectionPolicy::default()).await;
        assert_eq!(err.category(), "insecure_tls_refused");

        let allowed = ConnectionPolicy {
            allow_insecure_tls: true,
            ..Default::default()
        };
        let config = config_from_kubeconfig(skip.as_bytes(), allowed)
            .await
            .unwrap();
        assert!(config.accept_invalid_certs);
        assert!(
            config_from_kubeconfig(http.as_bytes(), allowed)
                .await
                .is_ok()
        );

        // `insecure-skip-tls-verify: false` is fine.
        let explicit = kubeconfig("zrh-1", "    insecure-skip-tls-verify: false", "");
        assert!(
            config_from_kubeconfig(explicit.as_bytes(), ConnectionPolicy::default())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn file_references_refused() {
        let all = ConnectionPolicy {
            allow_exec: true,
            allow_insecure_tls: true,
        };
        let ca = kubeconfig(
            "zrh-1",
            "    certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            "",
        );
        let err = refuse(&ca, all).await;
        assert_eq!(
            err,
            ConnectionError::FileReferenceRefused {
                entry: "cluster",
                name: "zrh-1".into(),
                field: "certificate-authority"
            }
        );
        assert_eq!(err.category(), "file_reference_refused");

        let token_file = kubeconfig(
            "zrh-1",
            "",
            "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
        );
        let err = refuse(&token_file, all).await;
        assert_eq!(
            err,
            ConnectionError::FileReferenceRefused {
                entry: "user",
                name: "zrh-1-admin".into(),
                field: "tokenFile"
            }
        );

        let key = kubeconfig("zrh-1", "", "    client-key: /etc/ssl/private/key.pem");
        let err = refuse(&key, all).await;
        assert_eq!(err.category(), "file_reference_refused");
        assert_eq!(
            err.to_string(),
            "user 'zrh-1-admin' of the kubeconfig refers to a file (client-key), which would be read from the operator's file system: refused, embed the data with client-key-data instead"
        );
    }

    #[tokio::test]
    async fn kube_errors_are_wrapped_without_secrets() {
        let bad_ca = kubeconfig(
            "zrh-1",
            "    certificate-authority-data: not*base64*s3cr3t-token",
            "",
        );
        let err = refuse(&bad_ca, ConnectionPolicy::default()).await;
        assert!(matches!(err, ConnectionError::Config(_)), "{err:?}");
        assert_eq!(err.category(), "config");

        let no_server = kubeconfig("zrh-1", "", "").replace(
            "    server: https://zrh-1.example.net:6443\n",
            "    proxy-url: \"\"\n",
        );
        let err = refuse(&no_server, ConnectionPolicy::default()).await;
        assert_eq!(err.category(), "config");
    }

    #[test]
    fn redaction_replaces_every_secret() {
        let secrets = vec![KEY_DATA.to_string(), TOKEN.to_string()];
        assert_eq!(
            redact(&format!("bad {TOKEN} and {KEY_DATA}"), &secrets),
            "bad [redacted] and [redacted]"
        );
    }

    #[test]
    fn secret_values_cover_credentials() {
        let kc = Kubeconfig::from_yaml(&kubeconfig("zrh-1", "", "")).unwrap();
        let secrets = secret_values(&kc);
        for secret in [TOKEN, PASSWORD, KEY_DATA] {
            assert!(
                secrets.iter().any(|s| s == secret),
                "{secret} not collected"
            );
        }
    }
}
