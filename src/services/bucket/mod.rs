//! A bucket of an S3-compatible object store as a served root
//! (`serve --root s3://BUCKET[/PREFIX]`), through the `object_store`
//! crate: where it is, the credentials, the check at start that it is
//! there and the credentials open it, and what the files service does
//! over it (DESIGN.md, "A bucket as the served root", says what each
//! request means on objects).

mod hash;
mod ops;
mod raw;
mod scope;
mod upload;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

pub use hash::PART;
pub(crate) use ops::{Reading, Target, TreeIndex};
pub(crate) use upload::{Finish, Multipart};

use super::files::{Listing, Sandbox, Stamp};
use super::root::is_partial_name;
use super::{Fault, PathRule};
use crate::proto::{Entry, Kind};

/// The zero-byte object that keeps a directory with nothing in it:
/// `DIR/.fwdir` (object_store's paths cannot end in `/`, so the `DIR/`
/// markers other tools write are read, as directories, and deleted, but
/// not written).
pub const DIR_MARKER: &str = ".fwdir";

/// What a bucket's entries report for a file's permission bits where its
/// object has none stored ([`META_MODE`]: another tool wrote it, or an
/// older framewire).
pub const FILE_MODE: u32 = 0o644;
/// What they report for a directory's, which a bucket does not keep.
pub const DIR_MODE: u32 = 0o755;

/// The metadata (`x-amz-meta-blake3`) holding an object's whole-file
/// BLAKE3, in hex.
pub const META_BLAKE3: &str = "blake3";
/// The metadata (`x-amz-meta-mtime`) holding the uploaded file's mtime,
/// whole seconds since the epoch (an object's own time is when it was
/// stored). Written always, beside [`META_MTIME_NS`], so that servers
/// older than that one read the time still.
pub const META_MTIME: &str = "mtime";
/// The metadata (`x-amz-meta-mtime-ns`) holding the uploaded file's mtime
/// to the nanosecond: nanoseconds since the epoch, decimal (an `i64`:
/// years 1678 to 2262). Read only where its whole seconds are
/// [`META_MTIME`]'s (a tool that rewrote the one and not the other is
/// believed for the seconds).
pub const META_MTIME_NS: &str = "mtime-ns";
/// The metadata (`x-amz-meta-mode`) holding the uploaded file's
/// permission bits, `mode & 0o777` in octal (`640`): not masked by any
/// umask, and never setuid, setgid or sticky.
pub const META_MODE: &str = "mode";

/// Files up to this size are stored with one PUT (their hash known
/// before, so carried as metadata); larger ones in parts of [`PART`].
pub const WHOLE_MAX: u64 = PART;

/// Objects whose facts are remembered at once (then forgotten and read
/// again).
const KNOWN_MAX: usize = 1 << 20;

/// HEAD requests a listing makes at once for objects it knows nothing of.
const HEADS_AT_ONCE: usize = 32;

/// Keys no path can name that are remembered as warned of (one warning
/// each), then forgotten.
const WARNED_MAX: usize = 4096;

/// What the server knows of one object: from its metadata (`HEAD`), or
/// from having stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Bytes.
    pub size: u64,
    /// The uploaded file's mtime (metadata), else when it was stored.
    pub mtime: i64,
    /// The same to the nanosecond ([`META_MTIME_NS`]), where stored.
    pub mtime_ns: Option<i64>,
    /// The uploaded file's permission bits ([`META_MODE`]), where stored.
    pub mode: Option<u32>,
    /// The store's ETag: what says the object is the same one (never
    /// taken for a checksum).
    pub etag: Option<String>,
    /// The whole-file BLAKE3, from metadata, from storing it, or from
    /// having read it.
    pub blake3: Option<blake3::Hash>,
}

impl Object {
    /// What its metadata keeps of the file.
    pub(crate) fn kept(&self) -> Kept {
        Kept { mtime: self.mtime, mtime_ns: self.mtime_ns, mode: self.mode }
    }

    /// A file's entry for it: its stored mode (else [`FILE_MODE`]) and
    /// its time to the nanosecond where stored.
    fn entry(&self, name: String) -> Entry {
        let mut e = Entry::new(name, self.size, Kind::File, self.mtime, self.mode.unwrap_or(FILE_MODE));
        e.mtime_ns = self.mtime_ns;
        e
    }
}

/// What an object keeps of its file beside the bytes, as its metadata:
/// the mtime in whole seconds ([`META_MTIME`]), to the nanosecond where
/// known ([`META_MTIME_NS`]), and the permission bits where given
/// ([`META_MODE`]). Set when the object is stored (`PUT`,
/// `CreateMultipartUpload`), never after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kept {
    /// Whole seconds since the epoch, rounded towards zero (the
    /// protocol's `mtime`).
    pub mtime: i64,
    /// Nanoseconds since the epoch.
    pub mtime_ns: Option<i64>,
    /// `mode & 0o777`.
    pub mode: Option<u32>,
}

impl Kept {
    /// A file's time (none given: now) and mode (its `rwx` bits only).
    pub(crate) fn of(stamp: Option<Stamp>, mode: Option<u32>) -> Kept {
        let stamp = stamp.unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Stamp { secs: i64::try_from(now.as_secs()).unwrap_or(i64::MAX), nsec: now.subsec_nanos() }
        });
        Kept { mtime: stamp.wire_secs(), mtime_ns: stamp.wire_ns(), mode: mode.map(|m| m & 0o777) }
    }

    /// Read from an object's metadata (`get` gives a member's value);
    /// `stored` is when the object was stored, the time of one without
    /// [`META_MTIME`].
    fn read(get: impl Fn(&'static str) -> Option<String>, stored: i64) -> Kept {
        let secs: Option<i64> = get(META_MTIME).and_then(|v| v.parse().ok());
        let ns = get(META_MTIME_NS)
            .and_then(|v| v.parse::<i64>().ok())
            .map(|ns| (ns, Stamp::from_wire(0, Some(ns)).wire_secs()))
            .filter(|(_, of_ns)| secs.is_none_or(|s| s == *of_ns));
        let mode = get(META_MODE).and_then(|v| u32::from_str_radix(&v, 8).ok()).filter(|m| *m <= 0o777);
        match ns {
            Some((ns, of_ns)) => Kept { mtime: of_ns, mtime_ns: Some(ns), mode },
            None => Kept { mtime: secs.unwrap_or(stored), mtime_ns: None, mode },
        }
    }

    /// Adds its metadata to `a`.
    fn add_to(&self, a: &mut Attributes) {
        a.insert(Attribute::Metadata(META_MTIME.into()), self.mtime.to_string().into());
        if let Some(ns) = self.mtime_ns {
            a.insert(Attribute::Metadata(META_MTIME_NS.into()), ns.to_string().into());
        }
        if let Some(mode) = self.mode {
            a.insert(Attribute::Metadata(META_MODE.into()), format!("{:o}", mode & 0o777).into());
        }
    }
}

/// The requests a bucket root has sent its store since it was opened
/// ([`Bucket::store_requests`]), by kind: what an operation costs, to
/// watch it (tests/bucket.rs bounds a tree upload's by them); nothing
/// decides on them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreRequests {
    /// Listings (`GET ?list-type=2`), one a page.
    pub lists: u64,
    /// `HEAD`s of objects.
    pub heads: u64,
    /// The rest: reads, writes, copies, deletes, multipart requests.
    pub others: u64,
}

/// The counts behind [`StoreRequests`], kept by the store's HTTP client.
#[derive(Debug, Default)]
struct Sent {
    lists: std::sync::atomic::AtomicU64,
    heads: std::sync::atomic::AtomicU64,
    others: std::sync::atomic::AtomicU64,
}

impl Sent {
    /// Counts one request about to be sent.
    fn count(&self, req: &object_store::client::HttpRequest) {
        let listing = req.method() == "GET" && req.uri().query().is_some_and(|q| q.contains("list-type="));
        let counter = match req.method().as_str() {
            _ if listing => &self.lists,
            "HEAD" => &self.heads,
            _ => &self.others,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where a bucket root is: `s3://BUCKET[/PREFIX]` and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketSpec {
    /// The bucket's name.
    pub bucket: String,
    /// The key prefix the root is below (no leading or trailing `/`;
    /// empty: the whole bucket).
    pub prefix: String,
    /// The S3 endpoint (`--s3-endpoint`; else `AWS_ENDPOINT_URL` or
    /// `AWS_ENDPOINT`, else AWS's own for the region). Path-style
    /// requests when one is given, as local servers want.
    pub endpoint: Option<String>,
    /// Plain `http://` endpoints allowed (`--s3-allow-http`, for loopback
    /// test servers).
    pub allow_http: bool,
    /// The largest object `mv` copies with one `CopyObject` (S3's limit,
    /// 5 GiB, by default); larger ones are copied through the server in
    /// parts (`UploadPart` of ranged reads: object_store has no ranged
    /// `UploadPartCopy`).
    pub copy_max: u64,
    /// The most objects a tree upload decides against (held in memory,
    /// about 300 bytes each): those below the destination it names, not
    /// the whole root (`TREE_INDEX_MAX`, 2,000,000, by default).
    pub index_max: usize,
}

pub use ops::TREE_INDEX_MAX;

/// An object was found at `path`: fine, unless the path was written
/// `NAME/`, which names a directory (`not_a_directory`, as the kernel's
/// ENOTDIR answers on a directory root).
fn file_found(path: &str) -> Result<(), Fault> {
    match Sandbox::relative(path)?.names_dir() {
        true => Err(Fault::NotADirectory { path: path.to_owned() }),
        false => Ok(()),
    }
}

/// Why a bucket root cannot be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BucketError {
    /// The root is not `s3://BUCKET[/PREFIX]`.
    #[error("{url:?}: {why} (a bucket root is s3://BUCKET or s3://BUCKET/PREFIX)")]
    Url {
        /// The root as given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No credentials were found, or a profile named is not there.
    #[error("no credentials for s3://{bucket}: {why}")]
    NoCredentials {
        /// The bucket.
        bucket: String,
        /// Where they were looked for.
        why: String,
    },
    /// The store refused the credentials.
    #[error("the object store refused the credentials for s3://{bucket}: {why}")]
    Credentials {
        /// The bucket.
        bucket: String,
        /// The store's words.
        why: String,
    },
    /// The bucket does not exist.
    #[error("no such bucket: {bucket} (at {endpoint})")]
    NoSuchBucket {
        /// The bucket.
        bucket: String,
        /// The endpoint asked.
        endpoint: String,
    },
    /// The store could not be reached, or answered what S3 does not.
    #[error("cannot reach the object store at {endpoint}: {why}")]
    Unreachable {
        /// The endpoint asked.
        endpoint: String,
        /// What failed.
        why: String,
    },
    /// The store's client could not be made from this configuration.
    #[error("object store configuration: {0}")]
    Config(String),
    /// A plain `http://` endpoint, not allowed ([`BucketSpec::with_allow_http`]).
    #[error("{endpoint}: plain http is refused unless allowed (it is meant for loopback test servers)")]
    PlainHttp {
        /// The endpoint.
        endpoint: String,
    },
}

impl BucketSpec {
    /// Parses `s3://BUCKET[/PREFIX]`.
    ///
    /// # Errors
    ///
    /// [`BucketError::Url`] for anything else, or a bucket name S3 would
    /// not take (3 to 63 of lowercase letters, digits, `.` and `-`).
    pub fn parse(url: &str) -> Result<BucketSpec, BucketError> {
        let bad = |why| BucketError::Url { url: url.to_owned(), why };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let fine = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-';
        if bucket.is_empty() {
            return Err(bad("no bucket name"));
        }
        if !(3..=63).contains(&bucket.len()) || !bucket.bytes().all(fine) {
            return Err(bad("a bucket name is 3 to 63 lowercase letters, digits, '.' and '-'"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|c| c.is_empty() || c == "." || c == "..") && !prefix.is_empty() {
            return Err(bad("the prefix has an empty, '.' or '..' component"));
        }
        Ok(BucketSpec {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: None,
            allow_http: false,
            copy_max: ops::COPY_MAX,
            index_max: TREE_INDEX_MAX,
        })
    }

    /// `s3://BUCKET[/PREFIX]` again.
    pub fn url(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket),
            p => format!("s3://{}/{p}", self.bucket),
        }
    }

    /// The same, at `endpoint` (path-style).
    pub fn with_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// The same, moving objects over `bytes` through the server instead of
    /// with one `CopyObject` (for stores with a lower copy limit than S3's).
    pub fn with_copy_max(mut self, bytes: u64) -> Self {
        self.copy_max = bytes;
        self
    }

    /// The same, a tree upload deciding against at most `objects` below
    /// its destination (a lower limit than `TREE_INDEX_MAX` bounds its
    /// memory further).
    pub fn with_index_max(mut self, objects: usize) -> Self {
        self.index_max = objects;
        self
    }

    /// The same, `http://` allowed or not.
    pub fn with_allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }
}

/// An opened bucket root: the store, and the prefix below which the
/// served tree is.
#[derive(Debug, Clone)]
pub struct Bucket {
    store: Arc<AmazonS3>,
    /// Listings and the deletes of `DIR/` markers (what object_store's
    /// paths cannot do: see [`raw`]).
    raw: Arc<raw::Raw>,
    prefix: Path,
    spec: BucketSpec,
    endpoint: String,
    /// What is known of objects, by key (valid while the ETag and size
    /// are those listed).
    known: Arc<Mutex<HashMap<String, Object>>>,
    /// Upload ids whose completion may replace (see [`upload::NoClobber`]).
    replacing: Arc<Mutex<HashSet<String>>>,
    /// Keys being uploaded by this server: a second upload of one waits,
    /// and the sweep of abandoned uploads leaves theirs alone.
    busy: Arc<Mutex<HashSet<String>>>,
    /// Keys no path names that a warning was logged for.
    warned: Arc<Mutex<HashSet<String>>>,
    /// The requests sent to the store.
    sent: Arc<Sent>,
}

/// A key below a listed directory, as the served tree reads it.
#[derive(Debug)]
pub(super) enum Key {
    /// An object a path names.
    Object(ObjectMeta),
    /// A zero-byte `DIR/` key another tool wrote (the S3 console's
    /// "Create folder"): the directory `dir`; `raw` is the key itself.
    Marker { dir: Path, raw: String },
    /// A common prefix of a one-level listing: a directory.
    Dir(Path),
    /// A key no path names (a control character, an empty, `.` or `..`
    /// component, a leading `/`, a `DIR/` key with bytes in it): skipped,
    /// and named once in a warning.
    Unnameable,
}

impl Bucket {
    /// Makes the store's client from `spec` and the usual AWS settings
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_REGION`, `AWS_ENDPOINT_URL`; else the profile `AWS_PROFILE`
    /// or `default` of `~/.aws/credentials` and `~/.aws/config`), then
    /// checks that the bucket is there and the credentials open it: a
    /// listing of the prefix, retried briefly.
    ///
    /// # Errors
    ///
    /// One [`BucketError`] saying which of those failed.
    pub async fn open(spec: BucketSpec) -> Result<Bucket, BucketError> {
        // The TLS stack's provider, ring, for the store's HTTPS (a no-op
        // if the process has one already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&spec.bucket);
        if env("AWS_ACCESS_KEY_ID").is_none() {
            let named = env("AWS_PROFILE");
            match Profile::read(named.as_deref().unwrap_or("default")) {
                Ok(found) => {
                    builder = builder.with_access_key_id(found.key_id).with_secret_access_key(found.secret);
                    if let Some(token) = found.token {
                        builder = builder.with_token(token);
                    }
                    if let (Some(region), None, None) = (found.region, env("AWS_REGION"), env("AWS_DEFAULT_REGION")) {
                        builder = builder.with_region(region);
                    }
                }
                // No credentials file and no profile named: object_store's
                // own chain (web identity, ECS task role, instance role).
                Err((true, _)) if named.is_none() => {}
                Err((_, why)) => {
                    return Err(BucketError::NoCredentials {
                        bucket: spec.bucket.clone(),
                        why: format!("AWS_ACCESS_KEY_ID is not set, and {why}"),
                    })
                }
            }
        }
        let endpoint = spec.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL")).or_else(|| env("AWS_ENDPOINT"));
        if endpoint.as_deref().is_some_and(|e| e.starts_with("http://")) && !spec.allow_http {
            return Err(BucketError::PlainHttp { endpoint: endpoint.unwrap_or_default() });
        }
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        if spec.allow_http {
            builder = builder.with_allow_http(true);
        }
        let no_clobber = upload::NoClobber::default();
        builder = builder.with_http_connector(no_clobber.clone());
        let config = |k: AmazonS3ConfigKey| builder.get_config_value(&k);
        let flag = |k: AmazonS3ConfigKey| config(k).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        if flag(AmazonS3ConfigKey::S3Express) {
            return Err(BucketError::Config("S3 Express One Zone buckets are not supported".to_owned()));
        }
        let region = config(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".to_owned());
        // The bucket's URL, as object_store builds it.
        let url = match (&endpoint, flag(AmazonS3ConfigKey::VirtualHostedStyleRequest)) {
            (Some(endpoint), _) => format!("{}/{}", endpoint.trim_end_matches('/'), spec.bucket),
            (None, true) => format!("https://{}.s3.{region}.amazonaws.com", spec.bucket),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{}", spec.bucket),
        };
        let signing = raw::Signing {
            skip: flag(AmazonS3ConfigKey::SkipSignature),
            unsigned_payload: flag(AmazonS3ConfigKey::UnsignedPayload),
            request_payer: flag(AmazonS3ConfigKey::RequestPayer),
        };
        // A start check that fails should say so in seconds, not after
        // the default three minutes of retries.
        // The store that serves keeps object_store's retries (S3 answers
        // SlowDown under load); only the check is cut short.
        let retry = RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(10), ..RetryConfig::default() };
        let checking =
            builder.clone().with_retry(retry.clone()).build().map_err(|e| BucketError::Config(e.to_string()))?;
        let store = builder.build().map_err(|e| BucketError::Config(e.to_string()))?;
        // The serving store's client, made last.
        let http = no_clobber.made().ok_or_else(|| BucketError::Config("no HTTP client was made".to_owned()))?;
        let raw = raw::Raw::new(http, url, region, store.credentials().clone(), signing);
        let checking = raw.clone().with_retry(retry).with_credentials(checking.credentials().clone());
        let endpoint = endpoint.unwrap_or_else(|| "AWS S3".to_owned());
        let prefix = Path::from(spec.prefix.as_str());
        let bucket = Bucket {
            store: Arc::new(store),
            raw: Arc::new(raw),
            prefix,
            spec,
            endpoint,
            known: Arc::default(),
            replacing: no_clobber.replacing,
            busy: Arc::default(),
            warned: Arc::default(),
            sent: no_clobber.sent,
        };
        bucket.check(&checking).await?;
        Ok(bucket)
    }

    /// Lists the prefix (one key of it; what any key holds is not read):
    /// the bucket is there and the credentials open it.
    async fn check(&self, checking: &raw::Raw) -> Result<(), BucketError> {
        match checking.list(&self.dir_prefix(&self.prefix), true, &raw::From::Start, Some(1)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.explain(e)),
        }
    }

    /// The listing prefix of the directory key `dir`: `DIR/`, or nothing
    /// for the bucket's own root.
    fn dir_prefix(&self, dir: &Path) -> String {
        match dir.as_ref() {
            "" => String::new(),
            d => format!("{d}/"),
        }
    }

    /// The keys below the directory key `dir`, a page ([`raw::PAGE_KEYS`])
    /// at a time, each read as what it is ([`Key`]): every key below, or
    /// with `delimited` one level of them and its common prefixes. A walk
    /// of every key goes on from the last key it was given (not a token),
    /// so it may delete what it was given as it goes.
    pub(super) fn pages(&self, dir: &Path, delimited: bool) -> BoxStream<'static, object_store::Result<Vec<Key>>> {
        let start = (self.clone(), self.dir_prefix(dir), Some(raw::From::Start));
        futures_util::stream::try_unfold(start, move |(b, prefix, from)| async move {
            let Some(from) = from else { return Ok(None) };
            let page = b.raw.list(&prefix, delimited, &from, None).await?;
            let next = match (&page.next, delimited) {
                (None, _) => None,
                (Some(token), true) => Some(raw::From::Token(token.clone())),
                (Some(_), false) => page.keys.last().map(|k| raw::From::After(k.key.clone())),
            };
            let keys = b.classify(page);
            Ok(Some((keys, (b, prefix, next))))
        })
        .boxed()
    }

    /// Whether any key is below the directory key `dir` (one that no path
    /// names, or a marker, too): whether that directory exists, and the
    /// time of the first key.
    pub(super) async fn first_below(&self, dir: &Path) -> object_store::Result<Option<i64>> {
        let page = self.raw.list(&self.dir_prefix(dir), false, &raw::From::Start, Some(1)).await?;
        Ok(page.keys.first().map(|k| k.last_modified.timestamp()))
    }

    /// What each key of a page is.
    fn classify(&self, page: raw::Page) -> Vec<Key> {
        let mut keys = Vec::with_capacity(page.keys.len() + page.prefixes.len());
        for p in page.prefixes {
            match p.strip_suffix('/').and_then(|d| self.named(d)) {
                Some(dir) => keys.push(Key::Dir(dir)),
                None => self.skipped(&p, &mut keys),
            }
        }
        for k in page.keys {
            match k.key.strip_suffix('/') {
                Some(dir) => match self.named(dir).filter(|_| k.size == 0) {
                    Some(dir) => keys.push(Key::Marker { dir, raw: k.key }),
                    None => self.skipped(&k.key, &mut keys),
                },
                None => match self.named(&k.key) {
                    Some(location) => keys.push(Key::Object(ObjectMeta {
                        location,
                        last_modified: k.last_modified,
                        size: k.size,
                        e_tag: k.e_tag,
                        version: None,
                    })),
                    None => self.skipped(&k.key, &mut keys),
                },
            }
        }
        keys
    }

    /// The key `key` as a path, if it is one (see [`named`]).
    fn named(&self, key: &str) -> Option<Path> {
        named(&self.spec.prefix, key)
    }

    /// A key no path names: left where it is, named in one warning.
    fn skipped(&self, key: &str, keys: &mut Vec<Key>) {
        keys.push(Key::Unnameable);
        let mut warned = self.warned.lock().expect("warned poisoned");
        if warned.len() >= WARNED_MAX {
            warned.clear();
        }
        if warned.insert(key.to_owned()) {
            tracing::warn!(
                key = %crate::text::printable(key),
                "skipped a key that no path can name (a control character, an empty, '.' or '..' component): it is listed, copied, moved and removed by nothing here"
            );
        }
    }

    /// An error of the store's at the start check, as what it means.
    fn explain(&self, e: object_store::Error) -> BucketError {
        let (bucket, endpoint) = (self.spec.bucket.clone(), self.endpoint.clone());
        let why = one_line(&e);
        // A listing's errors come as `Generic` with the S3 error code in
        // the text, for the bucket as for the credentials.
        let code = |c: &str| why.contains(&format!("<Code>{c}</Code>"));
        match e {
            object_store::Error::NotFound { .. } => BucketError::NoSuchBucket { bucket, endpoint },
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                BucketError::Credentials { bucket, why: s3_message(&why) }
            }
            _ if code("NoSuchBucket") => BucketError::NoSuchBucket { bucket, endpoint },
            _ if ["SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "ExpiredToken", "InvalidToken"]
                .iter()
                .any(|c| code(c)) =>
            {
                BucketError::Credentials { bucket, why: s3_message(&why) }
            }
            _ => BucketError::Unreachable { endpoint, why },
        }
    }

    /// Where it is.
    pub fn spec(&self) -> &BucketSpec {
        &self.spec
    }

    /// The requests sent to the store since this root was opened (the
    /// check at start included), by every clone of it.
    pub fn store_requests(&self) -> StoreRequests {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        StoreRequests { lists: load(&self.sent.lists), heads: load(&self.sent.heads), others: load(&self.sent.others) }
    }

    /// The object path of a peer's `path`, checked as for a local root,
    /// and its last component (`None`: the root).
    fn key(&self, path: &str) -> Result<(Path, Option<String>), Fault> {
        let rel = Sandbox::relative(path)?;
        // A key is UTF-8: a name that is not has no key.
        if path.contains('\0') {
            return Err(Fault::bad_path(path, PathRule::NotAKey("a name that is not UTF-8".to_owned())));
        }
        let name = rel.name().map(str::to_owned);
        if name.as_deref().is_some_and(|n| is_partial_name(n.as_bytes()) || n == DIR_MARKER) {
            return Err(not_found(path));
        }
        let joined = rel.joined();
        let key = match (self.spec.prefix.as_str(), joined.as_str()) {
            ("", j) => j.to_owned(),
            (p, "") => p.to_owned(),
            (p, j) => format!("{p}/{j}"),
        };
        // The key as the name is, not percent-encoded (listings give raw
        // keys, and another tool's `report[1].txt` must stat as listed).
        let key = Path::parse(&key).map_err(|e| Fault::bad_path(path, PathRule::NotAKey(e.to_string())))?;
        Ok((key, name))
    }

    /// What `stat` says of `path`: a file (an object), a directory (a
    /// prefix something is below, or the root), or `not_found`.
    ///
    /// # Errors
    ///
    /// A refusal for a bad path, a missing one, or the store's error.
    pub async fn stat(&self, path: &str) -> Result<Entry, Fault> {
        let (key, name) = self.key(path)?;
        let Some(name) = name else {
            return Ok(dir_entry(".".to_owned(), 0));
        };
        if let Some(object) = self.head(&key).await.map_err(|e| store_fault(path, e))? {
            file_found(path)?;
            // As a directory root's `stat`: the nanoseconds only where
            // whole seconds would lose something.
            let mut e = object_entry(name, &object);
            e.mtime_ns = e.mtime_ns.and_then(|ns| Stamp::from_wire(e.mtime, Some(ns)).fraction_ns());
            return Ok(e);
        }
        // A directory is there when any key is below it: the first one
        // says so (a level of a million is not paged through for it).
        match self.first_below(&key).await.map_err(|e| store_fault(path, e))? {
            Some(mtime) => Ok(dir_entry(name, mtime)),
            None => Err(not_found(path)),
        }
    }

    /// The entries of the directory `path` as `listing` asks (its own;
    /// every file below; every file and directory below), sorted by name,
    /// names relative to `path`; a file's listing is that file.
    ///
    /// # Errors
    ///
    /// A refusal for a bad or missing path, a listing over `budget`
    /// bytes of JSON, or the store's error.
    pub async fn list(&self, path: &str, listing: Listing, budget: usize) -> Result<Vec<Entry>, Fault> {
        let (key, name) = self.key(path)?;
        if let Some(name) = &name {
            if let Some(object) = self.head(&key).await.map_err(|e| store_fault(path, e))? {
                return Ok(vec![object_entry(name.clone(), &object)]);
            }
        }
        let depth = key.parts().count();
        let mut out = Vec::new();
        let mut left = budget;
        // A plain fn, not a closure: a closure taking a reference, live
        // across an await, makes the future not `Send` for every lifetime.
        fn push(e: Entry, out: &mut Vec<Entry>, left: &mut usize, budget: usize, path: &str) -> Result<(), Fault> {
            let cost = e.name.len() + 64;
            if cost >= *left {
                return Err(Fault::ListingTooLarge { path: path.to_owned(), budget: budget as u64 });
            }
            *left -= cost;
            out.push(e);
            Ok(())
        }
        /// A listed path's components below the listed directory.
        fn below(p: &Path, depth: usize) -> Vec<String> {
            p.parts().skip(depth).map(|p| p.as_ref().to_owned()).collect()
        }
        let mut anything = false;
        // Each file's entry as listed, and its listing, for what its
        // metadata keeps (the time, the mode), which a listing lacks.
        let mut files: Vec<(usize, ObjectMeta)> = Vec::new();
        let delimited = listing == Listing::Entries;
        let mut dirs = std::collections::BTreeSet::new();
        let mut pages = self.pages(&key, delimited);
        while let Some(page) = pages.try_next().await.map_err(|e| store_fault(path, e))? {
            for listed in page {
                anything = true;
                let (parts, object) = match listed {
                    Key::Unnameable => continue,
                    Key::Dir(dir) | Key::Marker { dir, .. } => (below(&dir, depth), None),
                    Key::Object(object) => (below(&object.location, depth), Some(object)),
                };
                let Some((last, parents)) = parts.split_last() else { continue };
                if listing == Listing::Tree || (delimited && object.is_none()) {
                    for i in 1..=parents.len() {
                        dirs.insert(parents[..i].join("/"));
                    }
                }
                let Some(object) = object else {
                    // A directory: a common prefix, or another tool's
                    // marker of one (not the listed directory's own).
                    if delimited || listing == Listing::Tree {
                        dirs.insert(parts.join("/"));
                    }
                    continue;
                };
                let partial = is_partial_name(last.as_bytes());
                if last == DIR_MARKER || partial != (listing == Listing::Partials) || (delimited && !parents.is_empty())
                {
                    continue;
                }
                if !partial {
                    files.push((out.len(), object.clone()));
                }
                push(file_entry(parts.join("/"), &object), &mut out, &mut left, budget, path)?;
            }
        }
        for dir in dirs {
            if !(delimited && is_partial_name(dir.as_bytes())) {
                push(dir_entry(dir, 0), &mut out, &mut left, budget, path)?;
            }
        }
        if !anything && name.is_some() {
            return Err(not_found(path));
        }
        let objects = self.objects(files.iter().map(|(_, m)| m.clone()).collect(), path).await?;
        for ((i, _), object) in files.iter().zip(objects) {
            let e = &mut out[*i];
            (e.mtime, e.mtime_ns, e.mode) = (object.mtime, object.mtime_ns, object.mode.unwrap_or(FILE_MODE));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Makes the directory `path` (a marker object, so it survives empty),
    /// with its parents if `parents`; whether it was made (`false`: it
    /// was there).
    ///
    /// # Errors
    ///
    /// A bad path, the root, a file in the way (`exists`; a file as a
    /// parent: `not_a_directory`), a
    /// missing parent without `parents` (`not_found`), the store's error.
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<bool, Fault> {
        let (key, name) = self.key(path)?;
        if name.is_none() {
            return Ok(false);
        }
        if self.is_object(&key, path).await? {
            // As a directory root answers (the tests on both roots check).
            return Err(Fault::ExistsNotADirectory { path: path.to_owned() });
        }
        match self.stat(path).await {
            Ok(_) => return Ok(false),
            Err(Fault::NotFound { .. }) => {}
            Err(r) => return Err(r),
        }
        // Each parent is a directory or nothing (then made too, or refused).
        let parts: Vec<String> = key.parts().map(|p| p.as_ref().to_owned()).collect();
        let prefix_depth = self.spec.prefix.split('/').filter(|p| !p.is_empty()).count();
        for i in prefix_depth + 1..parts.len() {
            let parent = Path::parse(parts[..i].join("/")).map_err(|e| store_fault(path, e.into()))?;
            if self.is_object(&parent, path).await? {
                return Err(Fault::ParentNotADirectory { path: path.to_owned() });
            }
            if !parents {
                match self.stat(&parts[prefix_depth..i].join("/")).await {
                    Ok(_) => {}
                    Err(Fault::NotFound { .. }) => return Err(Fault::NoParent { path: path.to_owned() }),
                    Err(r) => return Err(r),
                }
            }
        }
        let marker = key.clone().join(DIR_MARKER);
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&marker, PutPayload::new(), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(store_fault(path, e)),
        }
    }
}

impl Bucket {
    /// Whether an object is at `key` (`path` as the peer named it, for
    /// errors); the store's failures are refusals, not "no".
    async fn is_object(&self, key: &Path, path: &str) -> Result<bool, Fault> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_fault(path, e)),
        }
    }
}

/// The key `key` (below the root's `prefix`) as a path, if it is one: an
/// object_store path that is the key exactly (no control character, no
/// empty, `.` or `..` component, no leading or trailing `/`), and below
/// the root a path the protocol takes.
fn named(prefix: &str, key: &str) -> Option<Path> {
    let path = Path::parse(key).ok().filter(|p| p.as_ref() == key && !key.is_empty())?;
    let rel = match prefix {
        "" => key,
        p => key.strip_prefix(p).and_then(|r| r.strip_prefix('/')).unwrap_or(""),
    };
    (rel.is_empty() || Sandbox::relative(rel).is_ok()).then_some(path)
}

fn file_entry(name: String, meta: &ObjectMeta) -> Entry {
    Entry::new(name, meta.size, Kind::File, meta.last_modified.timestamp(), FILE_MODE)
}

fn object_entry(name: String, object: &Object) -> Entry {
    object.entry(name)
}

fn dir_entry(name: String, mtime: i64) -> Entry {
    Entry::new(name, 0, Kind::Dir, mtime, DIR_MODE)
}

/// The metadata of an object: `x-amz-meta-blake3` when the hash is
/// known, and what it keeps of its file ([`Kept`]).
fn attributes(hash: Option<&blake3::Hash>, kept: &Kept) -> Attributes {
    let mut a = Attributes::new();
    if let Some(hash) = hash {
        a.insert(Attribute::Metadata(META_BLAKE3.into()), hash.to_hex().to_string().into());
    }
    kept.add_to(&mut a);
    a
}

fn not_found(path: &str) -> Fault {
    Fault::NotFound { path: path.to_owned() }
}

/// The store's error on `path`, as a fault.
fn store_fault(path: &str, e: object_store::Error) -> Fault {
    match e {
        object_store::Error::NotFound { .. } => not_found(path),
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            Fault::StoreRefused { path: path.to_owned(), why: s3_message(&one_line(&e)) }
        }
        e => Fault::StoreFailed { path: path.to_owned(), why: s3_message(&one_line(&e)) },
    }
}

/// The code and message of an S3 error answer in `text`, else `text`.
fn s3_message(text: &str) -> String {
    let tag = |t: &str| {
        let (open, close) = (format!("<{t}>"), format!("</{t}>"));
        let from = text.find(&open)? + open.len();
        Some(text[from..].split(&close).next()?.to_owned())
    };
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => text.to_owned(),
    }
}

/// An error and its causes as one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// A profile's credentials and region from the AWS shared files.
struct Profile {
    key_id: String,
    secret: String,
    token: Option<String>,
    region: Option<String>,
}

impl Profile {
    /// The profile `name` of `AWS_SHARED_CREDENTIALS_FILE` (default
    /// `~/.aws/credentials`), with its region from `AWS_CONFIG_FILE`
    /// (default `~/.aws/config`, section `[profile NAME]`, or `[default]`).
    /// `Err((true, why))`: the credentials file cannot be read at all.
    fn read(name: &str) -> Result<Profile, (bool, String)> {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        let path = |var: &str, default: &str| std::env::var_os(var).map(PathBuf::from).unwrap_or(home.join(default));
        let credentials = path("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
        let text = std::fs::read_to_string(&credentials)
            .map_err(|e| (true, format!("{} cannot be read ({e})", credentials.display())))?;
        let section = ini_section(&text, name)
            .ok_or_else(|| (false, format!("{} has no profile [{name}]", credentials.display())))?;
        let get = |k: &str| section.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let (Some(key_id), Some(secret)) = (get("aws_access_key_id"), get("aws_secret_access_key")) else {
            return Err((
                false,
                format!(
                    "profile [{name}] of {} lacks aws_access_key_id or aws_secret_access_key",
                    credentials.display()
                ),
            ));
        };
        let config = std::fs::read_to_string(path("AWS_CONFIG_FILE", ".aws/config")).unwrap_or_default();
        let config_name = if name == "default" { "default".to_owned() } else { format!("profile {name}") };
        let region = ini_section(&config, &config_name)
            .and_then(|s| s.into_iter().find(|(k, _)| k == "region").map(|(_, v)| v))
            .or_else(|| get("region"));
        Ok(Profile { key_id, secret, token: get("aws_session_token"), region })
    }
}

/// The `key = value` lines of section `[name]` of an INI text (`#` and
/// `;` comments), if it has that section.
fn ini_section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut inside = false;
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.trim() == name;
            if inside {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            found.get_or_insert_with(Vec::new).push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls() {
        let s = BucketSpec::parse("s3://my-bucket").unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("my-bucket", ""));
        let s = BucketSpec::parse("s3://my.bucket/a/b/").unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("my.bucket", "a/b"));
        for bad in
            ["/srv", "s3://", "s3://ab", "s3://Upper", "s3://b_c_d", "s3://bkt/a/../b", "s3://bkt/a//b", "http://bkt"]
        {
            assert!(matches!(BucketSpec::parse(bad), Err(BucketError::Url { .. })), "{bad}");
        }
    }

    #[test]
    fn keys_a_path_names() {
        for key in ["a.txt", "d/report[1] ~x.txt", "d/é", "root/x"] {
            assert_eq!(named("", key).map(|p| p.as_ref().to_owned()).as_deref(), Some(key), "{key:?}");
        }
        for key in ["a\tb", "d/line\nbreak", "d//x", "/lead", "trail/", "d/./x", "d/../x", "", "a\u{7f}"] {
            assert!(named("", key).is_none(), "{key:?}");
        }
        assert!(named("root", "root/x").is_some());
    }

    #[test]
    fn what_metadata_keeps_of_a_file() {
        let read = |pairs: &[(&'static str, &str)]| {
            let get = |k: &'static str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned());
            Kept::read(get, 99)
        };
        let kept = Kept::of(Some(Stamp { secs: 1_577_934_245, nsec: 123_456_789 }), Some(0o4755));
        assert_eq!(kept, Kept { mtime: 1_577_934_245, mtime_ns: Some(1_577_934_245_123_456_789), mode: Some(0o755) });
        let mut a = Attributes::new();
        kept.add_to(&mut a);
        let get = |k: &'static str| a.get(&Attribute::Metadata(k.into())).map(|v| v.to_string());
        assert_eq!(get(META_MODE).as_deref(), Some("755"), "octal, no setuid");
        assert_eq!(Kept::read(get, 0), kept, "read back as written");
        // Another tool's object, or an older framewire's: as before.
        assert_eq!(read(&[]), Kept { mtime: 99, mtime_ns: None, mode: None });
        assert_eq!(read(&[(META_MTIME, "5")]), Kept { mtime: 5, mtime_ns: None, mode: None });
        // Before the epoch, the seconds round towards zero.
        let before = read(&[(META_MTIME, "-1"), (META_MTIME_NS, "-1500000000")]);
        assert_eq!((before.mtime, before.mtime_ns), (-1, Some(-1_500_000_000)));
        // Nanoseconds another tool's seconds disagree with are not believed.
        assert_eq!(
            read(&[(META_MTIME, "7"), (META_MTIME_NS, "5000000001")]),
            Kept { mtime: 7, mtime_ns: None, mode: None }
        );
        assert_eq!(read(&[(META_MTIME_NS, "5000000001")]).mtime, 5);
        for bad in ["7777", "rw-r--r--", "", "-1"] {
            assert_eq!(read(&[(META_MODE, bad)]).mode, None, "{bad:?}");
        }
        assert_eq!(read(&[(META_MODE, "0600")]).mode, Some(0o600));
        // A time in whole seconds is kept exactly, its bits masked.
        let whole = crate::services::files::Stamp::from_wire(3, None);
        assert_eq!(
            Kept::of(Some(whole), Some(0o4755)),
            Kept { mtime: 3, mtime_ns: Some(3_000_000_000), mode: Some(0o755) }
        );
    }

    #[test]
    fn ini_sections_and_comments() {
        let text = "[default]\naws_access_key_id = A\n# note\n[work]\naws_access_key_id=B\naws_secret_access_key = s=x\n; c\n[empty]\n";
        assert_eq!(ini_section(text, "default").unwrap(), vec![("aws_access_key_id".into(), "A".into())]);
        let work = ini_section(text, "work").unwrap();
        assert_eq!(work[1], ("aws_secret_access_key".into(), "s=x".into()));
        assert_eq!(ini_section(text, "empty").unwrap(), vec![]);
        assert!(ini_section(text, "nope").is_none());
    }
}
