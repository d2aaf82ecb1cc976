//! A served root seen from both sides: a real server serving it on
//! 127.0.0.1:0, and the storage itself, read and written as another tool
//! would (a directory through the file system, a bucket of SeaweedFS
//! through an S3 client). File tests write each check once, over a
//! [`RootServer`], and [`on_both_roots!`] runs it on a directory and on a
//! bucket.
//!
//! What a bucket root does differently is said here, and only here:
//! [`RootServer::keeps_modes`], [`RootServer::has_links`] and
//! [`RootServer::may_resume`]. Everything else a check asserts holds
//! for both.
#![allow(unused_macros)]

use std::net::SocketAddr;
use std::time::Duration;

use framewire::server::{self, Config, ServeError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The storage behind a [`RootServer`].
pub enum Store {
    /// A temporary directory.
    Dir(tempfile::TempDir),
    /// A prefix of SeaweedFS's test bucket, and a client of the bucket
    /// that is not framewire.
    #[cfg(feature = "s3")]
    Bucket { s3: object_store::aws::AmazonS3, prefix: String },
}

/// A server on 127.0.0.1:0 and the root it serves; stopped on drop.
pub struct RootServer {
    pub addr: SocketAddr,
    pub store: Store,
    stop: Option<oneshot::Sender<()>>,
    _task: JoinHandle<Result<(), ServeError>>,
}

impl Drop for RootServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl RootServer {
    /// A server of a fresh temporary directory.
    pub async fn dir() -> Self {
        let root = tempfile::tempdir().unwrap();
        let config = Config::new(root.path());
        Self::serve(config, Store::Dir(root)).await
    }

    /// A server of `s3://fwtest/PREFIX` on `weed` (hold
    /// [`ENV`](super::seaweed::ENV): this sets the AWS variables).
    #[cfg(feature = "s3")]
    pub async fn bucket(weed: &super::seaweed::Seaweed, prefix: &str) -> Self {
        let bucket = super::seaweed::open(weed, prefix).await;
        let config = Config::for_root(server::Root::Bucket(bucket));
        Self::serve(config, Store::Bucket { s3: super::seaweed::direct(weed), prefix: prefix.to_owned() }).await
    }

    async fn serve(config: Config, store: Store) -> Self {
        let (addr, stop, task) = super::spawn_server(config).await;
        RootServer { addr, store, stop: Some(stop), _task: task }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// "a directory" or "a bucket", for messages.
    pub fn kind(&self) -> &'static str {
        match self.store {
            Store::Dir(_) => "a directory",
            #[cfg(feature = "s3")]
            Store::Bucket { .. } => "a bucket",
        }
    }

    /// Whether files keep their permission bits. A bucket keeps none:
    /// every file lists as 0644 and every directory as 0755.
    pub fn keeps_modes(&self) -> bool {
        matches!(self.store, Store::Dir(_))
    }

    /// Whether the storage has links, so that a check can plant one. A
    /// bucket has none (a key is a key).
    pub fn has_links(&self) -> bool {
        matches!(self.store, Store::Dir(_))
    }

    /// What an upload cut after `sent` bytes may resume from: all of them
    /// in a directory's partial file (kept as they arrive); in a bucket,
    /// whole 8 MiB parts, as many of those among them as reached the
    /// store before the cut (a multipart upload keeps parts, not bytes,
    /// and a part in flight at the cut is lost).
    pub fn may_resume(&self, sent: u64) -> std::ops::RangeInclusive<u64> {
        match self.store {
            Store::Dir(_) => sent..=sent,
            #[cfg(feature = "s3")]
            Store::Bucket { .. } => 0..=sent / (8 << 20) * (8 << 20),
        }
    }

    /// The unit a resumed upload's offset is a multiple of: a byte in a
    /// directory, a part in a bucket.
    pub fn resume_unit(&self) -> u64 {
        match self.store {
            Store::Dir(_) => 1,
            #[cfg(feature = "s3")]
            Store::Bucket { .. } => 8 << 20,
        }
    }

    /// The directory's path on disk (a check that plants links).
    pub fn dir_path(&self) -> Option<&std::path::Path> {
        match &self.store {
            Store::Dir(d) => Some(d.path()),
            #[cfg(feature = "s3")]
            Store::Bucket { .. } => None,
        }
    }

    #[cfg(feature = "s3")]
    fn key(prefix: &str, path: &str) -> object_store::path::Path {
        object_store::path::Path::parse(format!("{prefix}/{path}")).unwrap()
    }

    /// What is stored at `path`, read straight from the storage.
    pub async fn read(&self, path: &str) -> Option<Vec<u8>> {
        match &self.store {
            Store::Dir(d) => std::fs::read(d.path().join(path)).ok(),
            #[cfg(feature = "s3")]
            Store::Bucket { s3, prefix } => {
                use object_store::ObjectStoreExt;
                let got = s3.get(&Self::key(prefix, path)).await.ok()?;
                Some(got.bytes().await.unwrap().to_vec())
            }
        }
    }

    /// Writes `data` at `path` straight into the storage, as another tool
    /// would (parent directories made).
    pub async fn write(&self, path: &str, data: &[u8]) {
        match &self.store {
            Store::Dir(d) => {
                let full = d.path().join(path);
                std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                std::fs::write(full, data).unwrap();
            }
            #[cfg(feature = "s3")]
            Store::Bucket { s3, prefix } => {
                use object_store::ObjectStoreExt;
                s3.put(&Self::key(prefix, path), data.to_vec().into()).await.unwrap();
            }
        }
    }

    /// The names stored directly below `dir` ("" for the root), partial
    /// files included, sorted and each once: files and directories as the
    /// storage holds them (in a bucket, the first component below `dir` of
    /// every key; a directory's marker is the directory itself, not a name
    /// in it).
    pub async fn names(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = match &self.store {
            Store::Dir(d) => match std::fs::read_dir(d.path().join(dir)) {
                Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
                Err(_) => Vec::new(),
            },
            #[cfg(feature = "s3")]
            Store::Bucket { s3, prefix } => {
                // From the keys, not the store's "common prefixes":
                // SeaweedFS lists a folder whose keys are all gone.
                use futures_util::TryStreamExt;
                use object_store::ObjectStore;
                let at = if dir.is_empty() { prefix.clone() } else { format!("{prefix}/{dir}") };
                let below = object_store::path::Path::parse(&at).unwrap();
                let keys: Vec<object_store::ObjectMeta> = s3.list(Some(&below)).try_collect().await.unwrap();
                keys.iter()
                    .filter_map(|o| o.location.as_ref().strip_prefix(&format!("{at}/"))?.split('/').next())
                    .filter(|n| *n != ".fwdir")
                    .map(str::to_owned)
                    .collect()
            }
        };
        names.sort();
        names.dedup();
        names
    }

    /// Waits until the partial file (or a bucket's resume record) of an
    /// upload to `path` is there.
    pub async fn wait_for_partial(&self, path: &str) {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let partial = format!(".{name}.fwpart");
        for _ in 0..1000 {
            if self.names(dir).await.contains(&partial) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no partial file of {path} on {}", self.kind());
    }
}

/// Runs each check, an `async fn(&RootServer)` of the calling file, on a
/// directory (one test each, `on_a_directory::CHECK`) and on a bucket of
/// SeaweedFS (all in turn, in `on_a_bucket`, on one store, each on a prefix
/// of its own; skipped with a message where SeaweedFS cannot be installed).
macro_rules! on_both_roots {
    ($($check:ident),* $(,)?) => {
        mod on_a_directory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(&crate::common::roots::RootServer::dir().await).await;
                }
            )*
        }

        #[cfg(feature = "s3")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn on_a_bucket() {
            let _env = crate::common::seaweed::ENV.lock().await;
            let Some(weed) = crate::common::seaweed::weed() else { return };
            let store = crate::common::seaweed::Seaweed::start(&weed);
            $(
                eprintln!("on a bucket: {}", stringify!($check));
                $check(&crate::common::roots::RootServer::bucket(&store, stringify!($check)).await).await;
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_roots;
