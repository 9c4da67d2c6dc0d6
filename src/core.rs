//! The gate's core: configuration, store, keyring, audit log, auth service, VPN supervisor and
//! metrics, opened by one function for both ways the binary runs — `serve`, and the CLI working
//! on the data file itself when no gate answers on the admin socket. The HTTP edge
//! (`http::AppState`) is the core plus what only the listeners need. The core also owns the
//! background tasks (audit retention, rate-limit eviction, the admin socket) and stops them.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::audit::Audit;
use crate::auth::AuthService;
use crate::config::Config;
use crate::crypto::{Keyring, MasterKey, PasswordHasher};
use crate::monitor::Monitor;
use crate::store::{Store, StoreError};
use crate::vpn::VpnStatus;

/// How the core is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// For `serve`: the data directory and master key are created when missing, metrics are
    /// published, the VPN supervisor starts.
    Serve,
    /// For the CLI on a stopped gate: the data file must exist, nothing runs in the background.
    Offline,
}

/// See the module documentation.
#[derive(Clone)]
pub struct Core {
    pub config: Arc<Config>,
    pub store: Store,
    pub keyring: Arc<Keyring>,
    pub audit: Audit,
    pub auth: Arc<AuthService>,
    /// The named secrets (a route's `upstream_headers` values).
    pub secrets: Arc<crate::secrets::Secrets>,
    /// The running supervisor; `None` when the CLI works on the store offline.
    pub vpn: Option<Arc<dyn VpnStatus>>,
    pub monitor: Arc<Monitor>,
    tasks: Arc<Tasks>,
}

/// Background tasks: each gets the stop signal and is awaited at shutdown.
struct Tasks {
    stop: watch::Sender<bool>,
    running: Mutex<Vec<(&'static str, tokio::task::JoinHandle<()>)>>,
}

impl Core {
    /// Opens the data directory, master key, store, keyring, audit log and auth service (and
    /// for [`Opening::Serve`] the VPN supervisor). Background tasks are started by the caller
    /// with [`Core::every`] and [`Core::spawn`].
    pub async fn open(config: Config, how: Opening) -> anyhow::Result<Core> {
        let store_path = config.store_path();
        let key_path = config.master_key_path();
        let (master, store) = match how {
            Opening::Serve => {
                prepare_data_dir(&config)?;
                // A new key beside existing data would only lock that data away.
                if !key_path.exists() && std::fs::metadata(&store_path).map(|m| m.len() > 0).unwrap_or(false) {
                    anyhow::bail!(
                        "master key file {} is missing but data file {} exists; restore the master key that belongs to it",
                        key_path.display(),
                        store_path.display()
                    );
                }
                let master = MasterKey::load_or_create(&key_path)?;
                (master, Store::open(&store_path)?)
            }
            Opening::Offline => {
                if !store_path.exists() {
                    anyhow::bail!("no data file at {}; start the gate once first", store_path.display());
                }
                let master = MasterKey::load(&key_path)?;
                let store = Store::open(&store_path).map_err(|e| match e {
                    StoreError::Locked(p) => anyhow::anyhow!(
                        "data file {} is in use but the admin socket does not answer; is the gate starting or stopping?",
                        p.display()
                    ),
                    other => other.into(),
                })?;
                (master, store)
            }
        };
        let keyring = Arc::new(Keyring::load_or_init(&store, &master).await?);
        drop(master);
        let hasher = PasswordHasher::new(&config.password)?;
        let monitor = Arc::new(Monitor::new());
        let audit = Audit::new(store.clone(), monitor.clone());
        if how == Opening::Serve {
            crate::monitor::prometheus();
            audit.publish_length();
        }
        let auth = AuthService::open(
            store.clone(),
            &keyring,
            hasher,
            config.auth.clone(),
            config.lockout.clone(),
            config.setup_token_path(),
            audit.clone(),
        )
        .await
        .context("loading the auth service")?;
        let secrets = crate::secrets::Secrets::open(store.clone(), keyring.clone(), audit.clone())
            .context("opening the named secrets")?;
        let vpn: Option<Arc<dyn VpnStatus>> = match how {
            Opening::Serve => {
                Some(Arc::new(crate::vpn::Vpn::start(&config.vpn, store.clone(), keyring.clone(), audit.clone()).await))
            }
            Opening::Offline => None,
        };
        Ok(Core {
            config: Arc::new(config),
            store,
            keyring,
            audit,
            auth: Arc::new(auth),
            secrets: Arc::new(secrets),
            vpn,
            monitor,
            tasks: Arc::new(Tasks { stop: watch::channel(false).0, running: Mutex::new(Vec::new()) }),
        })
    }

    /// Runs `task` until it ends or the core stops, whichever is first.
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let mut stop = self.tasks.stop.subscribe();
        let handle = tokio::spawn(async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = task => {}
            }
        });
        self.tasks.running.lock().unwrap_or_else(|p| p.into_inner()).push((name, handle));
    }

    /// Runs `tick` now and then every `period` until the core stops.
    pub fn every<F, Fut>(&self, name: &'static str, period: Duration, mut tick: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        self.spawn(name, async move {
            let mut interval = tokio::time::interval(period);
            loop {
                interval.tick().await;
                tick().await;
            }
        });
    }

    /// Stops every background task, waits for them, then flushes and closes the store.
    pub async fn shutdown(&self) {
        let _ = self.tasks.stop.send(true);
        let running = std::mem::take(&mut *self.tasks.running.lock().unwrap_or_else(|p| p.into_inner()));
        for (name, handle) in running {
            if let Err(e) = handle.await {
                tracing::warn!(task = name, error = %e, "background task failed");
            }
        }
        self.store.close().await;
    }
}

/// Creates the data directory with mode 0700 (or warns when an existing one is looser).
pub fn prepare_data_dir(config: &Config) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    } else if !dir.is_dir() {
        anyhow::bail!("data directory {} is not a directory", dir.display());
    } else if let Ok(meta) = std::fs::metadata(dir)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %dir.display(), mode = format!("{:04o}", meta.permissions().mode() & 0o777), "data directory is accessible by group or others; chmod 700 it");
    }
    Ok(())
}
